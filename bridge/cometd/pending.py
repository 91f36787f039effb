"""The prefetched messages not yet returned by ``receive()``, and the bound they keep."""

from __future__ import annotations

from collections import deque

from .protocol import Message


__all__ = ["PendingMessages"]


class PendingMessages:
    """A FIFO of messages with their sizes as received (exact counts: ``len()``, ``bytes``).

    The bound: at most ``max_count`` messages (``<= 0``: unbounded) and ``max_bytes`` bytes
    (None: unbounded); one message of any size always fits an empty buffer, so a message
    larger than ``max_bytes`` is taken alone instead of never.
    """

    __slots__ = ("_messages", "_sizes", "bytes", "max_bytes", "max_count")

    def __init__(self, max_count: int, max_bytes: int | None) -> None:
        self._messages: deque[Message] = deque()
        self._sizes: deque[int] = deque()  # parallel to _messages
        self.bytes = 0
        self.max_count = max_count
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:
        return bool(self._messages)

    def full(self) -> bool:
        """No further message fits (fetching pauses)."""
        if 0 < self.max_count <= len(self._messages):
            return True
        limit = self.max_bytes
        return limit is not None and self.bytes >= limit

    def admits(self, count: int, size: int) -> bool:
        """Whether ``count`` more messages of ``size`` bytes in all fit now."""
        buffered = len(self._messages)
        if not buffered and count == 1:
            return True
        if 0 < self.max_count < buffered + count:
            return False
        limit = self.max_bytes
        return limit is None or self.bytes + size <= limit

    def append(self, message: Message, size: int) -> None:
        self._messages.append(message)
        self._sizes.append(size)
        self.bytes += size

    def pop(self) -> Message:
        self.bytes -= self._sizes.popleft()
        return self._messages.popleft()

    def pop_many(self, limit: int) -> list[Message]:
        """The oldest ``min(limit, len(self))`` messages."""
        count = min(limit, len(self._messages))
        messages = self._messages
        sizes = self._sizes
        self.bytes -= sum(sizes.popleft() for _ in range(count))
        return [messages.popleft() for _ in range(count)]
