"""WebSocket over aiohttp ``ws_connect``: one socket, replies matched by id, pushes any time.

Each sent message that has an id waits for its reply with its own deadline; a reply without
id takes the oldest waiting message of the same channel (D9). Messages that match nothing
(events, server pushes, stale replies) go to ``hooks.on_messages``. Liveness comes from
aiohttp's heartbeat (ping, and close when no pong arrives). Headers set by extensions are
applied on every upgrade, and the client session's cookie jar is sent with it.

Back-pressure: a frame's events go to the client's buffer only as it has room; meanwhile the
reader reads no further frame, so aiohttp stops reading the socket (its frame queue is
bounded) and the server's further frames wait in TCP. A frame is at most ``max_frame_size``
bytes (aiohttp's ``max_msg_size``); a larger one closes the socket and is reported as a
skipped message of reason ``oversize`` (the client reconnects; with replay it resumes from its
watermark). While the reader waits for the application, the socket's liveness cannot be told
(pongs wait unread too), so aiohttp's heartbeat is suspended until the reader goes on, and the
deadline of a reply counts only time when the reader could read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar

import aiohttp

from ..exceptions import (
    MalformedResponseError,
    TransportConnectionClosed,
    TransportTimeoutError,
)
from ..payload_stream import PayloadStream, PayloadStreamError
from ..protocol import MAX_DEPTH, META_CONNECT, ConnectionType, Message, is_event
from .base import (
    Delivery,
    Transport,
    TransportConfig,
    TransportHooks,
    cancel_quietly,
    map_exceptions,
)


__all__ = ["WebSocketTransport"]

log = logging.getLogger(__name__)

# Frames up to this size are first decoded whole (the common one-message frame); larger ones
# are split incrementally.
_SMALL_FRAME = 64 * 1024


class WebSocketTransport(Transport):
    """One socket per client; reopened lazily (with fresh headers) after it closes."""

    connection_type: ClassVar[ConnectionType] = ConnectionType.WEBSOCKET

    def __init__(self, config: TransportConfig, hooks: TransportHooks) -> None:
        super().__init__(config, hooks)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        # id -> (channel, future); insertion order is send order (for id-less replies).
        self._waiting: dict[str, tuple[str, asyncio.Future[Message]]] = {}
        self._open_lock = asyncio.Lock()
        # Seconds the reader has waited for room (for the application): a reply's deadline
        # runs only while the reader could read. _held_since: when the current wait began.
        self._held_total = 0.0
        self._held_since: float | None = None

    async def send(self, payload: list[Message], *, deadline: float) -> dict[str, Message]:
        headers: dict[str, str] = dict(self.config.headers)
        await self.hooks.outgoing(payload, headers)
        ws = await self._socket(headers, deadline)
        loop = asyncio.get_running_loop()
        waiting = self._waiting
        futures: dict[str, asyncio.Future[Message]] = {}
        for message in payload:
            mid = message.get("id")
            if isinstance(mid, str):
                future: asyncio.Future[Message] = loop.create_future()
                futures[mid] = future
                waiting[mid] = (str(message.get("channel")), future)
        try:
            with map_exceptions():
                await ws.send_str(self.config.json_dumps(payload))
            if futures:
                remaining = deadline
                while True:
                    held = self._held_seconds()
                    done, _ = await asyncio.wait(futures.values(), timeout=remaining)
                    # The time the reader was held does not count: wait that long again.
                    remaining = self._held_seconds() - held
                    if len(done) == len(futures) or remaining <= 0:
                        break
                if len(done) != len(futures):
                    if any(m.get("channel") == META_CONNECT for m in payload):
                        # A lost poll means a dead socket: close it so everything fails fast.
                        await self._drop(ws)
                    raise TransportTimeoutError(f"no reply within {deadline:.1f}s")
            return {mid: future.result() for mid, future in futures.items()}
        finally:
            for mid, future in futures.items():
                waiting.pop(mid, None)
                if not future.done():
                    future.cancel()

    async def _socket(
        self, headers: dict[str, str], deadline: float
    ) -> aiohttp.ClientWebSocketResponse:
        ws = self._ws
        if ws is not None and not ws.closed:
            return ws
        async with self._open_lock:
            ws = self._ws
            if ws is not None and not ws.closed:
                return ws
            config = self.config
            with map_exceptions():
                async with asyncio.timeout(min(deadline, config.network_delay) or None):
                    ws = await config.session.ws_connect(
                        config.url,
                        headers=headers,
                        ssl=config.ssl,
                        heartbeat=config.heartbeat,
                        max_msg_size=config.max_frame_size,
                        autoping=True,
                    )
            self._ws = ws
            self._reader = asyncio.create_task(self._read(ws), name="cometd-websocket-reader")
            return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # This task must never die with an exception: every failure ends in _fail_all.
        # One delivery for the connection's frames: each frame is flushed before the next.
        delivery = Delivery(self.hooks, self._route, None, lambda on: self._hold(ws, on))
        try:
            async for frame in ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    await self._handle(delivery, frame.data)
                elif frame.type is aiohttp.WSMsgType.BINARY:
                    self.hooks.on_skipped(
                        "invalid_json", f"binary frame of {len(frame.data)} bytes"
                    )
                elif frame.type is aiohttp.WSMsgType.ERROR:
                    error = ws.exception()
                    if (
                        isinstance(error, aiohttp.WebSocketError)
                        and error.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                    ):
                        self.hooks.on_skipped(
                            "oversize",
                            f"WebSocket frame over max_frame_size={self.config.max_frame_size}"
                            " bytes; the socket is closed",
                        )
                    log.debug("websocket error: %r", error)
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("websocket reader failed")
        finally:
            if self._ws is ws:
                self._ws = None
            self._fail_all(TransportConnectionClosed("WebSocket closed"))

    async def _handle(self, delivery: Delivery, text: str) -> None:
        if len(text) <= _SMALL_FRAME:
            one = self._one_message(text)
            if one is not None:
                message, size = one
                # Nesting takes a bracket a level: a frame with few of them is shallow
                # without walking the message (Faye sends every event in its own frame).
                shallow = size <= MAX_DEPTH or text.count("{") + text.count("[") <= MAX_DEPTH
                await delivery.add(message, size, shallow=shallow)
                await delivery.flush()
                return
        stream = PayloadStream(self.config.max_message_size, self.config.json_loads)
        stream.feed(text.encode())
        try:
            await delivery.take(stream)
            stream.close()
        except PayloadStreamError as exc:
            # From close(): the frame ends inside an item (a cut frame). Reported like an
            # undecodable item: the client treats it as a lost response.
            self.hooks.on_skipped(exc.reason, str(exc)[:200])
        except (MalformedResponseError, ValueError) as exc:  # already reported by take()
            log.debug("skipping the rest of a websocket frame: %s", exc)
        await delivery.flush()

    def _one_message(self, text: str) -> tuple[Any, int] | None:
        """A frame holding one message (faye pushes each in its own) decoded whole, with its
        size; None for anything else (the incremental path decodes and reports it)."""
        try:
            obj = self.config.json_loads(text)
        except (ValueError, TypeError, RecursionError):
            return None
        if not isinstance(obj, list) or len(obj) != 1:
            return None
        if text[:2] == "[{" and text[-2:] == "}]" and text.isascii():
            size = len(text) - 2  # the common frame: no white space around the message
        else:
            inner = text.strip()[1:-1].strip()
            size = len(inner) if inner.isascii() else len(inner.encode())
        if size > self.config.max_message_size:
            return None
        return obj[0], size

    def _route(self, messages: list[Message]) -> list[Message]:
        waiting = self._waiting
        rest: list[Message] = []
        for message in messages:
            if not is_event(message):
                mid = message.get("id")
                key = str(mid) if isinstance(mid, str | int) else None
                if key is None:
                    channel = message.get("channel")
                    key = next(
                        (k for k, (ch, f) in waiting.items() if ch == channel and not f.done()),
                        None,
                    )
                entry = waiting.get(key) if key is not None else None
                if entry is not None and not entry[1].done():
                    entry[1].set_result(message)
                    continue
            rest.append(message)
        return rest

    def _hold(self, ws: aiohttp.ClientWebSocketResponse, on: bool) -> None:
        # No frame (not even a pong) is read while held: aiohttp's heartbeat would take the
        # silence for a dead peer and close the socket, losing what the server has sent.
        now = asyncio.get_running_loop().time()
        if on:
            self._held_since = now
            _suspend_heartbeat(ws)
        else:
            if self._held_since is not None:
                self._held_total += now - self._held_since
                self._held_since = None
            _resume_heartbeat(ws, self.config.heartbeat)

    def _held_seconds(self) -> float:
        since = self._held_since
        now = asyncio.get_running_loop().time()
        return self._held_total + (now - since if since is not None else 0.0)

    def _fail_all(self, error: Exception) -> None:
        for _, future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
                # Mark retrieved: a sender that timed out or was cancelled never reads it.
                future.exception()

    async def _drop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self._ws is ws:
            self._ws = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), self.config.network_delay)

    async def close(self) -> None:
        ws, reader = self._ws, self._reader
        self._ws = None
        if ws is not None:
            await self._drop(ws)
        cancel_quietly(reader)
        if reader is not None:
            # wait() rather than await: never swallow a cancellation of close() itself.
            await asyncio.wait({reader})
        self._fail_all(TransportConnectionClosed("transport closed"))


def _suspend_heartbeat(ws: aiohttp.ClientWebSocketResponse) -> None:
    # aiohttp has no public switch for its heartbeat. With ``_heartbeat`` None it neither
    # pings nor re-arms on the data still arriving until its frame queue is full; without
    # these attributes (another aiohttp) the heartbeat simply keeps running.
    if hasattr(ws, "_heartbeat") and callable(getattr(ws, "_cancel_heartbeat", None)):
        ws._heartbeat = None
        ws._cancel_heartbeat()


def _resume_heartbeat(ws: aiohttp.ClientWebSocketResponse, heartbeat: float) -> None:
    if not heartbeat or ws.closed or not hasattr(ws, "_heartbeat") or ws._heartbeat is not None:
        return
    reset = getattr(ws, "_reset_heartbeat", None)
    if callable(reset):
        ws._heartbeat = heartbeat
        reset()
