"""The confirmed prefix of one channel's replay ids (pure, no I/O).

Replay ids are opaque but increasing per channel (Salesforce promises "higher than the ID of
the previous event"); the watermark therefore only ever moves up.
"""

from __future__ import annotations

from collections import deque
from typing import Any


__all__ = ["ContiguousWatermark"]


class ContiguousWatermark:
    """The confirmed prefix of one channel's message stream.

    Call :meth:`received` in arrival order and :meth:`confirmed` in any order (publisher
    confirms come back out of order). :attr:`position` is the highest replay id such that
    every message received before it is confirmed. Both calls are O(1) amortised: each
    received message enters the deque once and leaves it once.

    The same replay id can be received twice (a replay after a reconnect repeats what was
    still in flight). A confirm is about the *event*: once the broker holds one copy, every
    copy received so far is done, so one ``confirmed(id)`` settles all of them.
    """

    __slots__ = ("_open", "_order", "_position")

    def __init__(self, position: int | None = None) -> None:
        self._position = position
        # Arrival order; each entry is [replay_id, done]. A list, not a tuple, so a confirm can
        # flip ``done`` in place without searching the deque.
        self._order: deque[list[Any]] = deque()
        # replay id -> entries not yet confirmed (usually one).
        self._open: dict[int, list[list[Any]]] = {}

    @property
    def position(self) -> int | None:
        """The confirmed position, or None if nothing was ever confirmed (nor given)."""
        return self._position

    @property
    def pending(self) -> int:
        """Messages received but not yet behind the watermark (unconfirmed or queued behind one)."""
        return len(self._order)

    def received(self, replay_id: int) -> None:
        """Record a message in arrival order; it holds the watermark until confirmed."""
        entry: list[Any] = [replay_id, False]
        self._order.append(entry)
        self._open.setdefault(replay_id, []).append(entry)

    def confirmed(self, replay_id: int) -> bool:
        """Record the broker's confirm of ``replay_id``; returns whether :attr:`position` moved.

        A confirm for an id that is not pending (already settled, or never received) is ignored.
        """
        entries = self._open.pop(replay_id, None)
        if entries is None:
            return False
        for entry in entries:
            entry[1] = True
        return self._advance()

    def is_open(self, replay_id: int) -> bool:
        """Whether ``replay_id`` was received and is not confirmed yet."""
        return replay_id in self._open

    def _advance(self) -> bool:
        before = self._position
        order = self._order
        while order and order[0][1]:
            replay_id: int = order.popleft()[0]
            if self._position is None or replay_id > self._position:
                self._position = replay_id
        return self._position != before
