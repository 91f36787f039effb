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
from ..protocol import ConnectionType, Message, validate_payload


__all__ = [
    "Transport",
    "TransportConfig",
    "TransportHooks",
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
    #: ``(messages, size)``: ``size`` is each message's share of its response's bytes.
    on_messages: Callable[[list[Message], int], None]
    on_skipped: Callable[[str, str], None]


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
    messages, skipped = validate_payload(obj)
    for reason, detail in skipped:
        hooks.on_skipped(reason, detail)
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
                )
            else:
                kept.append(message)
        messages = kept
    return messages


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


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """Read a response body, failing as soon as it exceeds ``cap`` bytes."""
    length = response.content_length
    if length is not None and length > cap:
        raise MalformedResponseError(f"response of {length} bytes exceeds {cap}")
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await response.content.read(1 << 16)
        if not chunk:
            break
        total += len(chunk)
        if total > cap:
            raise MalformedResponseError(f"response exceeds max_response_size={cap}")
        chunks.append(chunk)
    return b"".join(chunks)


def cancel_quietly(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task without the done-callback noise of aiocometd D10."""
    if task is not None and not task.done():
        task.cancel()
