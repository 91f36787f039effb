"""The transport interface, response decoding with size caps, and exception mapping.

A transport sends one payload (a list of messages) and returns the replies to it, keyed by
the sent message ids. Everything else the server sends (events, unsolicited or stale
replies) goes to ``hooks.on_messages`` in arrival order. aiohttp and asyncio exceptions are
translated here into the :class:`~bridge.cometd.exceptions.TransportError` family.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp

from ..exceptions import (
    HTTPStatusError,
    MalformedResponseError,
    TransportConnectionClosed,
    TransportError,
    TransportTimeoutError,
    WebSocketUpgradeRefused,
)
from ..payload_stream import Oversize, PayloadStream, PayloadStreamError
from ..protocol import MAX_DEPTH, ConnectionType, Message, is_event, split_payload


__all__ = [
    "Transport",
    "TransportConfig",
    "TransportHooks",
    "Delivery",
    "decode_payload",
    "map_exceptions",
]

_SAMPLE = 200


@dataclass(slots=True)
class TransportConfig:
    """What every transport of one client shares (one session, one cookie jar)."""

    url: str
    session: aiohttp.ClientSession
    json_dumps: Callable[[Any], str]
    json_loads: Callable[[str], Any]
    max_message_size: int
    max_response_size: int
    #: The largest WebSocket frame accepted (aiohttp's ``max_msg_size``).
    max_frame_size: int = 32 * 1024 * 1024
    #: Allowance on top of the server's ``advice.timeout`` for any request's deadline.
    network_delay: float = 10.0
    #: WebSocket ping interval; no pong within half of it closes the socket.
    heartbeat: float = 15.0
    headers: Mapping[str, str] = field(default_factory=dict)
    ssl: Any = True


@dataclass(slots=True)
class TransportHooks:
    """Callbacks into the client: extension pipeline, delivery, and reporting."""

    outgoing: Callable[[list[Message], MutableMapping[str, str]], Awaitable[None]]
    incoming: Callable[[list[Message], Mapping[str, str] | None], Awaitable[None]]
    #: ``(messages, sizes)``: each message's size in bytes as received (its encoded form).
    on_messages: Callable[[list[Message], list[int]], None]
    #: ``(reason, detail[, item])``: ``item`` is the skipped decoded item, when there is one
    #: (none for a body that is not JSON, a message cut or over the size cap while streaming).
    on_skipped: Callable[..., None]
    #: Whether ``count`` more events of ``size`` bytes in all fit in the client's buffer now.
    admits: Callable[[int, int], bool] = lambda count, size: True
    #: Returns once one more event of ``size`` bytes fits in the client's buffer.
    wait_room: Callable[[int], Awaitable[None]] = lambda size: asyncio.sleep(0)
    #: A response is over (complete or failed): whatever held for its length ends.
    response_done: Callable[[], None] = lambda: None


class Transport(ABC):
    """Sends payloads to the server; one instance per connection type per client."""

    connection_type: ClassVar[ConnectionType]

    def __init__(self, config: TransportConfig, hooks: TransportHooks) -> None:
        self.config = config
        self.hooks = hooks

    @abstractmethod
    async def send(self, payload: list[Message], *, deadline: float) -> dict[str, Message]:
        """Send ``payload``; return the replies by sent id within ``deadline`` seconds.

        Raises a :class:`TransportError` subclass; never an aiohttp or asyncio exception.
        A reply the server did not send is simply absent from the result.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections; pending sends fail with TransportConnectionClosed."""


def _sample(text: str) -> str:
    return text if len(text) <= _SAMPLE else text[:_SAMPLE] + "..."


def decode_payload(body: str, config: TransportConfig, hooks: TransportHooks) -> list[Message]:
    """Decode one response body or frame (already checked against max_response_size).

    Items that are not Bayeux messages, or larger than ``max_message_size``, are skipped
    and reported; a body that is not JSON, or not a list/object, raises
    MalformedResponseError.
    """
    try:
        obj = config.json_loads(body)
    except (ValueError, TypeError, RecursionError) as exc:
        hooks.on_skipped("invalid_json", _sample(body))
        raise MalformedResponseError(f"response is not JSON: {exc}") from None
    messages, skipped = split_payload(obj)
    for reason, detail, item in skipped:
        hooks.on_skipped(reason, detail, item)
    if not messages and not isinstance(obj, list):
        raise MalformedResponseError("response is not a list of Bayeux messages")
    # Cheap path: a body under the per-message cap cannot hold an oversize message.
    if len(body) > config.max_message_size:
        kept: list[Message] = []
        for message in messages:
            size = len(config.json_dumps(message))
            if size > config.max_message_size:
                hooks.on_skipped(
                    "oversize",
                    f"{message.get('channel')} message of {size} bytes "
                    f"(max_message_size={config.max_message_size})",
                    message,
                )
            else:
                kept.append(message)
        messages = kept
    return messages


class Delivery:
    """Takes the messages of one response (or frame) as they are decoded, never more events
    than the client's buffer has room for.

    Messages are gathered into groups; a group goes through the extensions and out (``route``
    takes the replies and returns the rest, which go to the buffer) when the next event would
    not fit, and at the end. :meth:`take` then waits for the application to make room:
    meanwhile nothing more is decoded or read, so the rest of the response waits in the socket.
    """

    __slots__ = (
        "_bytes",
        "_events",
        "_group",
        "_headers",
        "_held",
        "_hooks",
        "_may_wait",
        "_route",
        "_shallow",
        "_sizes",
    )

    def __init__(
        self,
        hooks: TransportHooks,
        route: Callable[[list[Message]], list[Message]],
        headers: Mapping[str, str] | None,
        held: Callable[[bool], None] | None = None,
        *,
        may_wait: bool = True,
    ) -> None:
        self._hooks = hooks
        self._may_wait = may_wait
        self._route = route
        self._headers = headers
        self._held = held
        self._group: list[Any] = []
        self._sizes: list[int] = []  # parallel to _group
        self._shallow = True  # every item of the group is known not to nest too deep
        self._events = 0
        self._bytes = 0

    async def take(self, stream: PayloadStream) -> None:
        """Take every item ``stream`` holds now (waiting for room as needed)."""
        hooks = self._hooks
        while True:
            try:
                item = stream.next()
            except PayloadStreamError as exc:
                hooks.on_skipped(exc.reason, str(exc)[: _SAMPLE + 60])
                raise MalformedResponseError(f"response is not JSON: {exc}") from None
            if item is None:
                return
            if isinstance(item, Oversize):
                hooks.on_skipped(
                    "oversize", f"message of {item.size} bytes (max_message_size exceeded)"
                )
                continue
            message, size = item
            # An item of at most MAX_DEPTH bytes cannot nest deeper: a level takes a bracket.
            await self.add(message, size, shallow=size <= MAX_DEPTH)

    def offer(self, message: Any, size: int, *, shallow: bool = False) -> bool:
        """Take one decoded item of ``size`` bytes if that needs no wait; False (nothing
        taken) when it is an event the buffer has no room for yet (``add`` then waits).
        ``shallow``: the item is known not to nest deeper than MAX_DEPTH (its encoded form
        has fewer brackets than that), which spares the depth check."""
        if isinstance(message, dict) and is_event(message):  # any json_loads' mapping type
            if self._may_wait and not self._hooks.admits(self._events + 1, self._bytes + size):
                return False
            self._events += 1
            self._bytes += size
        self._group.append(message)
        self._sizes.append(size)
        if not shallow:
            self._shallow = False
        return True

    async def add(self, message: Any, size: int, *, shallow: bool = False) -> None:
        """Take one decoded item of ``size`` bytes (waiting for room if it is an event)."""
        if self.offer(message, size, shallow=shallow):
            return
        # An event with no room yet: what is gathered goes out first, then room is awaited.
        await self.flush()
        if not self._hooks.admits(1, size):
            await self._wait_room(size)
        # Taken also when the wait ended without room (closing, or a response being shed:
        # the extension drops it from the group).
        self._events += 1
        self._bytes += size
        self._group.append(message)
        self._sizes.append(size)
        self._shallow = self._shallow and shallow

    async def _wait_room(self, size: int) -> None:
        hooks, held = self._hooks, self._held
        if held is not None:
            held(True)
        try:
            await hooks.wait_room(size)
        finally:
            if held is not None:
                held(False)

    async def flush(self) -> None:
        """Send the gathered group through the extensions and out."""
        group, sizes = self._group, self._sizes
        if not group:
            return
        shallow = self._shallow
        only_events = self._events == len(group)
        self._group, self._sizes, self._events, self._bytes = [], [], 0, 0
        self._shallow = True
        hooks = self._hooks
        messages, skipped = split_payload(group, shallow=shallow)
        for reason, detail, item in skipped:
            hooks.on_skipped(reason, detail, item)
        await hooks.incoming(messages, self._headers)
        # Routing matches replies to requests: a group of events alone passes through whole.
        rest = messages if only_events else self._route(messages)
        if not rest:
            return
        if len(rest) == 1 and len(group) == 1 and rest[0] is group[0]:
            hooks.on_messages(rest, sizes)  # one message (a Faye frame): nothing to match
            return
        # Extensions and replies may have taken some messages: match sizes by identity.
        by_id = {id(m): size for m, size in zip(group, sizes, strict=True)}
        hooks.on_messages(rest, [by_id.get(id(m), 0) for m in rest])


@contextlib.contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate aiohttp/asyncio errors into the TransportError family (httpcore idiom)."""
    try:
        yield
    except TransportError:
        raise
    except aiohttp.WSServerHandshakeError as exc:  # before its base, ClientResponseError
        raise WebSocketUpgradeRefused(f"WebSocket upgrade refused: {exc}") from exc
    except aiohttp.ClientResponseError as exc:
        raise HTTPStatusError(exc.status, exc.message) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise TransportTimeoutError("request timed out") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
        raise TransportConnectionClosed(f"connection failed: {exc!r}") from exc
    except aiohttp.ClientError as exc:
        raise TransportError(f"transport failed: {exc!r}") from exc


def cancel_quietly(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task without the done-callback noise of aiocometd D10."""
    if task is not None and not task.done():
        task.cancel()
