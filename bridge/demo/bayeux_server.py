"""A small, correct Bayeux server on aiohttp: long-polling and WebSocket transports, per-session
queues, held ``/meta/connect`` with advice in milliseconds, session expiry after ``maxInterval``.

It is the embedded demo source and the base of the test suite's scriptable fake server: the
``before_batch``/``after_batch`` hooks see every incoming batch and the replies about to be sent
(a subclass may delay, replace or corrupt them). Messages are delivered on ``/meta/connect``
replies only, which keeps the order of a channel total on both transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import WSMsgType, web

from bridge.demo import protocol as bp
from bridge.demo.protocol import Message


BROWSER_COOKIE = "BAYEUX_BROWSER"


@dataclass(eq=False)
class Session:
    """One handshaken client."""

    client_id: str
    browser_id: str | None
    subscriptions: set[str] = field(default_factory=set)
    queue: deque[Message] = field(default_factory=deque)
    # Set when the held connect must return: messages queued, a newer connect, removal.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    connect_generation: int = 0
    held: bool = False
    removed: bool = False
    # Pending server-side disconnect: the held/next connect says reconnect=none.
    disconnecting: bool = False
    last_seen: float = field(default_factory=time.monotonic)


@dataclass
class Exchange:
    """One incoming batch and the reply the server is about to send.

    Hooks may set ``status``/``raw_body`` (sent instead of the JSON replies), ``close`` (close
    the WebSocket after sending; with an error ``status``, instead of sending), or ``handled``
    in ``before_batch`` to skip normal processing.
    """

    transport: str
    messages: list[Any]
    replies: list[Message] = field(default_factory=list)
    status: int = 200
    raw_body: bytes | None = None
    content_type: str = "application/json"
    handled: bool = False
    close: bool = False


class BayeuxServer:
    """Serve Bayeux at ``path``; ``await start()`` (or ``async with``), then ``publish()``."""

    def __init__(
        self,
        *,
        path: str = "/cometd",
        timeout_ms: int = 25_000,
        interval_ms: int = 0,
        max_interval_ms: int = 10_000,
        connection_types: tuple[str, ...] = bp.CONNECTION_TYPES,
        browser_cookie: bool = False,
        max_request_bytes: int = 1 << 20,
    ) -> None:
        self.path = path
        self.timeout_ms = timeout_ms
        self.interval_ms = interval_ms
        self.max_interval_ms = max_interval_ms
        self.connection_types = connection_types
        self.browser_cookie = browser_cookie
        self.sessions: dict[str, Session] = {}
        self.host = "127.0.0.1"
        self.port = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._scheme = "http"
        # Set at every subscription (see wait_for_subscribers); cleared by its waiter.
        self._subscribed = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.app = web.Application(client_max_size=max_request_bytes)
        self.app.router.add_get(path, self._handle_websocket)
        self.app.router.add_post(path, self._handle_post)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Listen on ``host:port`` (0 = a free port, then readable as ``self.port``); with
        ``ssl_context``, over TLS (``https://``/``wss://``)."""
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        self._scheme = "http" if ssl_context is None else "https"
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = _bound_port(runner, port)
        self._sweeper = asyncio.create_task(self._sweep(), name="bayeux-session-sweeper")

    async def stop(self) -> None:
        """Close every socket, answer held connects, stop listening."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for session in list(self.sessions.values()):
            self._remove(session)
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{self._scheme}://{host}:{self.port}{self.path}"

    # -- server-side API -----------------------------------------------------------------------

    def publish(self, channel: str, data: Any, *, message_id: str | None = None) -> int:
        """Queue ``data`` on ``channel`` for every subscribed session; returns how many."""
        message: Message = {
            "channel": channel,
            "data": data,
            "id": message_id if message_id is not None else f"s{next(self._ids)}",
        }
        delivered = 0
        for session in self.sessions.values():
            if any(bp.matches(pattern, channel) for pattern in session.subscriptions):
                session.queue.append(message)
                session.wake.set()
                delivered += 1
        return delivered

    async def wait_for_subscribers(self, channels: Sequence[str]) -> None:
        """Return once some session subscribes to each of ``channels`` (exactly these names)."""
        while not all(any(c in s.subscriptions for s in self.sessions.values()) for c in channels):
            self._subscribed.clear()
            await self._subscribed.wait()

    def drop_sessions(self) -> int:
        """Forget every session, as expiry would; their next connect gets 402."""
        sessions = list(self.sessions.values())
        for session in sessions:
            self._remove(session)
        return len(sessions)

    def disconnect_session(self, client_id: str) -> bool:
        """End a session from the server side: its connect reply says ``reconnect: none`` and
        a ``/meta/disconnect`` message follows, as CometD servers do."""
        session = self.sessions.get(client_id)
        if session is None:
            return False
        session.disconnecting = True
        session.wake.set()
        return True

    def stats(self) -> dict[str, Any]:
        subscriptions: dict[str, int] = {}
        for session in self.sessions.values():
            for channel in session.subscriptions:
                subscriptions[channel] = subscriptions.get(channel, 0) + 1
        return {
            "sessions": len(self.sessions),
            "held_connects": sum(1 for s in self.sessions.values() if s.held),
            "subscriptions": subscriptions,
            "queued": sum(len(s.queue) for s in self.sessions.values()),
        }

    # -- hooks (the scriptable fake overrides these) -------------------------------------------

    async def before_batch(self, exchange: Exchange) -> None:
        """Called with each incoming batch before it is processed."""

    async def after_batch(self, exchange: Exchange) -> None:
        """Called with each batch's replies before they are sent."""

    # -- transports ----------------------------------------------------------------------------

    async def _handle_post(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json_response([_error_message("413::request_too_large")], status=413)
        try:
            messages = bp.decode_batch(body)
        except bp.BadRequestError as exc:
            return _json_response([_error_message(f"400::{exc}")], status=400)
        exchange = Exchange(transport=bp.LONG_POLLING, messages=messages)
        browser_id = request.cookies.get(BROWSER_COOKIE)
        new_browser_id: str | None = None
        if self.browser_cookie and browser_id is None:
            new_browser_id = browser_id = secrets.token_hex(16)
        await self._run(exchange, browser_id)
        if exchange.raw_body is not None:
            response = web.Response(
                body=exchange.raw_body, status=exchange.status, content_type=exchange.content_type
            )
        else:
            response = _json_response(exchange.replies, status=exchange.status)
        if new_browser_id is not None and any(
            r.get("channel") == bp.META_HANDSHAKE and r.get("successful") for r in exchange.replies
        ):
            response.set_cookie(BROWSER_COOKIE, new_browser_id, httponly=True, path="/")
        return response

    async def _handle_websocket(self, request: web.Request) -> web.StreamResponse:
        if bp.WEBSOCKET not in self.connection_types:
            return web.Response(status=400, text="WebSocket transport disabled\n")
        # A short close timeout: stop() must not wait long for a silent peer.
        ws = web.WebSocketResponse(heartbeat=None, autoping=True, timeout=2.0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade\n")
        await ws.prepare(request)
        self._sockets.add(ws)
        browser_id = request.cookies.get(BROWSER_COOKIE)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                # Each frame is served concurrently: a held connect must not block a subscribe.
                task = asyncio.create_task(self._serve_frame(ws, frame.data, browser_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            self._sockets.discard(ws)
        return ws

    async def _serve_frame(self, ws: web.WebSocketResponse, text: str, browser: str | None) -> None:
        try:
            messages = bp.decode_batch(text)
        except bp.BadRequestError as exc:
            await _ws_send(ws, json.dumps([_error_message(f"400::{exc}")]))
            return
        exchange = Exchange(transport=bp.WEBSOCKET, messages=messages)
        await self._run(exchange, browser)
        if exchange.close and exchange.status >= 400:
            # What an HTTP error becomes on a WebSocket: the server drops the socket.
            await ws.close(code=1011, message=f"HTTP {exchange.status}".encode())
            return
        if exchange.raw_body is not None:
            await _ws_send(ws, exchange.raw_body.decode("utf-8", "replace"))
        elif exchange.replies:
            await _ws_send(ws, json.dumps(exchange.replies))
        if exchange.close:
            await ws.close()

    # -- protocol ------------------------------------------------------------------------------

    async def _run(self, exchange: Exchange, browser_id: str | None) -> None:
        await self.before_batch(exchange)
        if not exchange.handled:
            exchange.replies = await self._process(exchange, browser_id)
        await self.after_batch(exchange)

    async def _process(self, exchange: Exchange, browser_id: str | None) -> list[Message]:
        replies: list[Message] = []
        # Only a connect alone in its batch may be held (otherwise the other replies would wait).
        may_hold = len(exchange.messages) == 1
        for item in exchange.messages:
            message = bp.check_message(item)
            if message is None:
                replies.append(bp.invalid_item_reply(item))
                continue
            replies.extend(await self._dispatch(message, exchange, browser_id, may_hold))
        return replies

    async def _dispatch(
        self, message: Message, exchange: Exchange, browser_id: str | None, may_hold: bool
    ) -> list[Message]:
        channel: str = message["channel"]
        if channel == bp.META_HANDSHAKE:
            return [self._handshake(message, browser_id)]
        session = self._find_session(message, browser_id)
        if session is None:
            return [self._unknown_session(message)]
        session.last_seen = time.monotonic()
        if channel == bp.META_CONNECT:
            return await self._connect(message, session, exchange.transport, may_hold)
        if channel == bp.META_SUBSCRIBE:
            return [self._subscribe(message, session)]
        if channel == bp.META_UNSUBSCRIBE:
            return [self._unsubscribe(message, session)]
        if channel == bp.META_DISCONNECT:
            self._remove(session)
            return [bp.reply_to(message, successful=True)]
        if bp.is_meta(channel):
            return [bp.error_reply(message, f"400:{channel}:unknown_meta_channel")]
        return [self._publish_from_client(message)]

    def _advice(self) -> Message:
        return {"reconnect": "retry", "interval": self.interval_ms, "timeout": self.timeout_ms}

    def _handshake(self, message: Message, browser_id: str | None) -> Message:
        offered = message.get("supportedConnectionTypes")
        if not isinstance(offered, list) or not all(isinstance(t, str) for t in offered):
            return bp.error_reply(
                message, "400::supportedConnectionTypes_missing", advice={"reconnect": "none"}
            )
        if not bp.common_types(offered, self.connection_types):
            return bp.error_reply(
                message,
                f"405:{','.join(offered)}:no_common_connection_type",
                supportedConnectionTypes=list(self.connection_types),
                advice={"reconnect": "none"},
            )
        client_id = secrets.token_hex(16)
        self.sessions[client_id] = Session(client_id=client_id, browser_id=browser_id)
        return bp.reply_to(
            message,
            successful=True,
            clientId=client_id,
            version="1.0",
            supportedConnectionTypes=list(self.connection_types),
            advice=self._advice(),
        )

    def _find_session(self, message: Message, browser_id: str | None) -> Session | None:
        client_id = message.get("clientId")
        session = self.sessions.get(client_id) if isinstance(client_id, str) else None
        if session is None:
            return None
        if self.browser_cookie and session.browser_id != browser_id:
            # As cometd-nodejs-server: without its browser cookie the session is not found.
            return None
        return session

    def _unknown_session(self, message: Message) -> Message:
        fields: dict[str, Any] = {}
        if message["channel"] in (bp.META_CONNECT, bp.META_HANDSHAKE):
            fields["advice"] = {"reconnect": "handshake", "interval": 0}
        return bp.error_reply(message, bp.SESSION_UNKNOWN, **fields)

    async def _connect(
        self, message: Message, session: Session, transport: str, may_hold: bool
    ) -> list[Message]:
        connection_type = message.get("connectionType")
        if connection_type not in self.connection_types:
            return [bp.error_reply(message, f"400:{connection_type}:invalid_connection_type")]
        if connection_type != transport:
            return [bp.error_reply(message, f"400:{connection_type}:wrong_transport")]
        # A newer connect releases the one being held: one outstanding connect per session.
        session.connect_generation += 1
        generation = session.connect_generation
        if session.held:
            session.wake.set()
            await asyncio.sleep(0)  # let the older connect answer first
        timeout_ms = _client_timeout(message, self.timeout_ms)
        if may_hold and not session.queue and not session.disconnecting and timeout_ms > 0:
            session.wake.clear()
            session.held = True
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_ms / 1000):
                        await session.wake.wait()
            finally:
                if session.connect_generation == generation:
                    session.held = False
        session.last_seen = time.monotonic()
        replies: list[Message] = []
        if session.connect_generation == generation:
            # Only the newest connect takes the queue.
            replies.extend(session.queue)
            session.queue.clear()
        if session.disconnecting:
            self._remove(session)
            replies.append(
                bp.reply_to(message, successful=True, advice={"reconnect": "none", "interval": 0})
            )
            replies.append({"channel": bp.META_DISCONNECT, "successful": True})
            return replies
        replies.append(bp.reply_to(message, successful=True, advice=self._advice()))
        return replies

    def _subscribe(self, message: Message, session: Session) -> Message:
        channels = bp.subscription_list(message.get("subscription"))
        if channels is None:
            return bp.error_reply(message, "403::subscription_missing")
        echo = message["subscription"]
        for channel in channels:
            if not bp.is_valid_channel(channel):
                return bp.error_reply(message, f"400:{channel}:channel_invalid", subscription=echo)
            if bp.is_meta(channel):
                return bp.error_reply(message, f"403:{channel}:subscribe_denied", subscription=echo)
        # /service/** subscriptions are acknowledged but not recorded (Bayeux).
        session.subscriptions.update(c for c in channels if not bp.is_service(c))
        self._subscribed.set()
        return bp.reply_to(message, successful=True, subscription=echo)

    def _unsubscribe(self, message: Message, session: Session) -> Message:
        channels = bp.subscription_list(message.get("subscription"))
        if channels is None:
            return bp.error_reply(message, "403::subscription_missing")
        session.subscriptions.difference_update(channels)
        return bp.reply_to(message, successful=True, subscription=message["subscription"])

    def _publish_from_client(self, message: Message) -> Message:
        channel: str = message["channel"]
        if not bp.is_valid_channel(channel) or bp.is_wild(channel):
            return bp.error_reply(message, f"400:{channel}:channel_invalid")
        if "data" not in message:
            return bp.error_reply(message, "400::data_missing")
        if not bp.is_service(channel):
            self.publish(channel, message["data"])
        return bp.reply_to(message, successful=True)

    def _remove(self, session: Session) -> None:
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        session.removed = True
        session.wake.set()

    async def _sweep(self) -> None:
        """Expire sessions that have had no connect for ``max_interval`` (as CometD does)."""
        period = max(0.05, min(1.0, self.max_interval_ms / 4000))
        while True:
            await asyncio.sleep(period)
            deadline = time.monotonic() - self.max_interval_ms / 1000
            for session in list(self.sessions.values()):
                if not session.held and session.last_seen < deadline:
                    self._remove(session)


def _client_timeout(message: Message, default_ms: int) -> int:
    """The hold time: the client's ``advice.timeout`` when it sent one (e.g. 0), else ours."""
    advice = message.get("advice")
    if isinstance(advice, dict):
        timeout = advice.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout >= 0:
            return min(int(timeout), default_ms)
    return default_ms


def _error_message(error: str) -> Message:
    return {"channel": "/meta/unknown", "successful": False, "error": error}


def _json_response(body: list[Message], *, status: int) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


async def _ws_send(ws: web.WebSocketResponse, text: str) -> None:
    # The peer may be gone already; the session expires on its own then.
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.send_str(text)


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested
