"""The CometD client: aiocometd's documented API on a sans-I/O core and thin transports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

import aiohttp

from .events import (
    AuthFailed,
    ClientEvent,
    Connected,
    FetchPaused,
    FetchResumed,
    Handshaken,
    Listener,
    MessageSkipped,
    PossibleGap,
    Reconnecting,
    ServerClosed,
    SubscriptionFailed,
)
from .exceptions import (
    ClientError,
    ClientInvalidOperation,
    CometdError,
    HTTPStatusError,
    MalformedResponseError,
    ServerError,
    TransportConnectionClosed,
    TransportError,
    TransportTimeoutError,
    WebSocketUpgradeRefused,
)
from .extensions import AuthExtension, Extension
from .protocol import (
    MAX_ADVICE,
    META_DISCONNECT,
    POLL,
    Action,
    Advice,
    Backoff,
    ConnectionType,
    Decision,
    FailureKind,
    Message,
    MessageFactory,
    channel_matches,
    classify_failure,
    decide_connect,
    decide_handshake,
    decide_transport_error,
    failure_text,
    instant_reply_spacing,
    is_event,
    validate_channel,
)
from .session_state import ClientState, Event, SessionState
from .transports import Transport, TransportConfig, TransportHooks, create_transport


__all__ = ["Client", "ClientState", "DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_MAX_RESPONSE_SIZE"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_RESPONSE_SIZE = 32 * 1024 * 1024
_CLOSED_BY_SERVER = "Connection closed by the server"
# Floor of the keep-alive pace while paused: the server answers at once while it holds
# unacknowledged messages, so a zero pace would be a hot loop.
_MIN_KEEPALIVE = 0.1
# A /meta/connect reply with no event sooner than this was not held: a server answering every
# poll at once is paced (protocol.instant_reply_spacing) instead of polled in a hot loop.
_INSTANT = 0.5


def _reason_of(exc: TransportError) -> str:
    if isinstance(exc, TransportTimeoutError):
        return "timeout"
    if isinstance(exc, HTTPStatusError):
        return "http_error"
    if isinstance(exc, MalformedResponseError):
        return "malformed"
    return "network"


def _connection_types(value: object) -> list[ConnectionType]:
    if value is None:
        return [ConnectionType.WEBSOCKET, ConnectionType.LONG_POLLING]
    if isinstance(value, str):
        return [ConnectionType(value)]
    if isinstance(value, Sequence):
        types = [ConnectionType(item) for item in value]
        if types:
            return list(dict.fromkeys(types))
    raise ValueError(f"connection_types must be a ConnectionType or a non-empty list: {value!r}")


class Client:
    """A CometD client that keeps a session open in the background.

    Messages are fetched before :meth:`receive` is called, within a bound that holds at every
    moment: ``pending_count <= max_pending_count`` and ``pending_bytes <= max_pending_bytes``
    (``pending_bytes`` is exact: the bytes of the buffered messages as received; one message
    larger than ``max_pending_bytes`` is taken alone into an empty buffer).
    ``max_pending_count <= 0`` means unbounded. A response (long-polling) or frame (WebSocket) is
    decoded message by message as the buffer has room; meanwhile the transport reads nothing
    more, so the rest stays in the socket and TCP holds it at the server. While the buffer is
    full no new ``/meta/connect`` is sent either (``FetchPaused``/``FetchResumed`` events,
    ``state == "paused"``); fetching resumes when the consumer makes room. A WebSocket frame
    is at most ``max_frame_size`` bytes (default: ``max_pending_bytes`` when given, else
    ``max_response_size``); a larger one closes the socket and is reported as a
    ``MessageSkipped`` of reason ``oversize``. On WebSocket a reply waits behind the messages
    held in the socket: while the buffer is full, consume concurrently with
    :meth:`publish`/:meth:`subscribe` (on long-polling their responses are never held; events
    they carry, rare, may exceed the bound). A long-poll response has no total cap (it is
    never held whole); each message is capped by ``max_message_size``. A session
    that expired while paused is re-handshaken (reason ``buffer_full``) and resubscribed.
    With an extension that can shed
    (:meth:`Extension.can_shed`, e.g. the ack extension on a server that acknowledges), a
    long-poll response is held at most one keep-alive pace, ``min(timeout / 2,
    maxInterval / 3)`` of the server's advice, then the rest of it is shed; the paused client
    then keeps the session alive with a ``/meta/connect`` at that pace, whose new messages the
    extension removes as they are decoded (the server keeps them and sends them again after
    the pause), so memory stays flat whatever the server re-sends.

    Events on channels the client did not subscribe to (wildcards counted) are dropped and
    reported (``MessageSkipped`` reason ``unsubscribed_channel``): a server cannot grow what the
    application keeps per channel. ``only_subscribed=False`` delivers them (a server that
    sends to sessions directly, e.g. CometD ``ServerSession.deliver``).

    Network failures are repaired transparently (reconnect, re-handshake, resubscribe). If
    the connection cannot be restored for ``connection_timeout`` seconds, :meth:`receive`
    raises :class:`TransportTimeoutError` while the client keeps trying (``None``: forever).
    """

    def __init__(
        self,
        url: str,
        connection_types: ConnectionType | Sequence[ConnectionType] | None = None,
        *,
        connection_timeout: float | None = 10.0,
        max_pending_count: int = 100,
        max_pending_bytes: int | None = None,
        extensions: Sequence[Extension] | None = None,
        auth: AuthExtension | None = None,
        ssl: Any = None,
        headers: Mapping[str, str] | None = None,
        json_dumps: Callable[[Any], str] = json.dumps,
        json_loads: Callable[[str], Any] = json.loads,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        max_frame_size: int | None = None,
        listener: Listener | None = None,
        network_delay: float = 10.0,
        heartbeat: float = 15.0,
        backoff: Backoff | None = None,
        rnd: Callable[[], float] = random.random,
        only_subscribed: bool = True,
    ) -> None:
        self.url = url
        self.connection_timeout = connection_timeout
        self.extensions: list[Extension] = list(extensions or [])
        self.auth = auth
        self.ssl = ssl
        self._connection_types = _connection_types(connection_types)
        self._max_pending = max_pending_count
        self._max_pending_bytes = max_pending_bytes
        self._headers = dict(headers or {})
        self._json_dumps = json_dumps
        self._json_loads = json_loads
        self._max_message_size = max_message_size
        self._max_response_size = max_response_size
        self._max_frame_size = max_frame_size or max_pending_bytes or max_response_size
        self._listener = listener
        self._network_delay = network_delay
        self._heartbeat = heartbeat
        self._backoff = backoff or Backoff()
        self._rnd = rnd
        self._only_subscribed = only_subscribed

        self._factory = MessageFactory()
        self._advice = Advice()
        # Where the session is (open, connected, paused, closing...): the transition table of
        # session_state.py; the flags below are what that table does not describe.
        self._session_state = SessionState()
        self._session: aiohttp.ClientSession | None = None
        self._transports: dict[ConnectionType, Transport] = {}
        self._transport: Transport | None = None
        self._websocket_refused = False
        self._subscriptions: dict[str, None] = {}  # an ordered set
        # Subscribe requests in flight: their events may arrive before the reply does.
        self._subscribing: dict[str, int] = {}
        self._buffer: deque[Message] = deque()
        self._sizes: deque[int] = deque()  # parallel to _buffer: bytes as received
        self._pending_bytes = 0
        self._space = asyncio.Event()  # set when receive() takes from the buffer
        self._held_until: float | None = None  # when the last hold of a response ended
        # The extension shedding the rest of the current long-poll response (buffer full).
        self._shedding_response: Extension | None = None
        self._errors: deque[CometdError] = deque()
        self._fatal: CometdError | None = None
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        # The buffer filled (a pause) since the last successful connect: a session lost now
        # expired because we stopped fetching (history, not the current state).
        self._paused_since_connect = False
        # A /meta/connect of the background task is in flight (close() disconnects first so
        # the server answers it, instead of cancelling it and losing what it flushed).
        self._polling = False
        # The next /meta/connect asks for an immediate reply (after a handshake or a transport
        # failure; an unsuccessful reply keeps the pace of the previous connect).
        self._first_connect = True
        self._attempt = 0
        self._unconnected_since: float | None = None
        self._last_connected = 0.0
        self._auth_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._clamp_logged = False
        self._instant_streak = 0  # consecutive successful connect replies, instant and empty
        self._delivered = 0  # events taken by _deliver (to tell an empty reply)
        self._rehandshakes = 0  # handshakes since a session last worked
        # A lost response on an ack session: the server re-sends its messages in a later reply.
        self._ack_resend_due = False
        # A replay session lost a response: events are discarded until the re-handshake, whose
        # subscriptions replay them from the confirmed position.
        self._replay_lost = False
        self._frame_lost = False  # an undecodable frame closed the WebSocket
        self._side_tasks: set[asyncio.Task[None]] = set()

    # -- public properties -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True before :meth:`open` and after :meth:`close`."""
        return self._session_state.closed

    @property
    def subscriptions(self) -> set[str]:
        """The channels currently subscribed to."""
        return set(self._subscriptions)

    @property
    def connection_type(self) -> ConnectionType | None:
        """The negotiated transport, or None before the first handshake."""
        return self._transport.connection_type if self._transport else None

    @property
    def pending_count(self) -> int:
        """Messages received and not yet returned by :meth:`receive` (exact)."""
        return len(self._buffer)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the pending messages as received (their encoded form; exact)."""
        return self._pending_bytes

    @property
    def has_pending_messages(self) -> bool:
        return bool(self._buffer)

    @property
    def client_id(self) -> str | None:
        """The server's id for the current session, or None."""
        return self._factory.client_id

    @property
    def state(self) -> ClientState:
        return self._session_state.public

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Handshake, negotiate the transport, connect, and start fetching in the background.

        Raises TransportError (network), ServerError (refused) or ClientError (no common
        connection type) if the first session cannot be established.
        """
        if not self._session_state.closed:
            raise ClientInvalidOperation("Client is already open.")
        self._reset()
        self._session_state.apply(Event.OPEN)
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        try:
            reply = await self._handshake()
            if reply.get("successful") is not True and self._is_auth_failure(reply):
                self._emit(AuthFailed(failure_text(reply)))
                await self._authenticate()
                reply = await self._handshake()
            if reply.get("successful") is not True:
                raise ServerError("Handshake request failed.", reply)
            await self._accept_handshake(reply)
            reply = await self._connect()
            if reply.get("successful") is not True:
                raise ServerError("Connect request failed.", reply)
            self._merge_advice(reply.get("advice"), self._transport_type())
            decision = self._decide_connect(reply)
            self._on_connected()
            if decision.action is Action.CONNECT:
                self._rehandshakes = 0  # the session works
            if decision.action is Action.CLOSE:
                self._set_fatal(ServerError(_CLOSED_BY_SERVER, reply))
        except BaseException:
            await self._teardown()
            raise
        self._task = asyncio.create_task(self._run(decision), name=f"cometd-client {self.url}")

    async def close(self) -> None:
        """Disconnect politely (if connected) and release every resource. Idempotent."""
        if self._session_state.closed:
            return
        self._session_state.apply(Event.CLOSE)
        self._space.set()  # a response held for room now drains into the buffer (see _admits)
        task, self._task = self._task, None
        held = self._holds_ack()
        if held:
            # A /meta/disconnect tells the server to drop what it keeps for our ack.
            log.info("CometD session closed without /meta/disconnect: an ack is held")
            self._note_ack_session_end()
        polite = (
            self._fatal is None
            and self._factory.client_id is not None
            and self._transport
            and not held
        )
        disconnected = False
        if polite and task is not None and not task.done() and self._polling:
            # Cancelling a held /meta/connect loses what the server flushes into it (it counts
            # those messages as delivered). Disconnect first: the server answers the held
            # connect, and the task, seeing the session closing, stops once it has taken that reply.
            await self._disconnect()
            disconnected = True
            await asyncio.wait({task}, timeout=min(self._network_delay, 2.0))
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if polite and not disconnected:
            await self._disconnect()
        if self._buffer:
            # Not lost: a closed client still returns its buffer from receive().
            log.info("CometD client closed with %d messages still buffered", len(self._buffer))
        await self._teardown()

    async def _disconnect(self) -> None:
        message = self._factory.disconnect()
        with contextlib.suppress(CometdError):
            await self._send([message], min(self._network_delay, 2.0))

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- application API ---------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel``; raise ServerError if the server refuses."""
        self._check_open()
        validate_channel(channel, subscribe=True)
        message = self._factory.subscribe(channel)
        # The server may send the first events (another connection) before this reply.
        self._subscribing[channel] = self._subscribing.get(channel, 0) + 1
        try:
            reply = await self._request(message)
        finally:
            left = self._subscribing.pop(channel) - 1
            if left:
                self._subscribing[channel] = left
        if reply.get("successful") is not True:
            self._emit(SubscriptionFailed(channel, reply.get("error")))
            raise ServerError("Subscribe request failed.", reply)
        self._subscriptions[channel] = None

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe from ``channel``; raise ServerError if the server refuses."""
        self._check_open()
        validate_channel(channel, subscribe=True)
        message = self._factory.unsubscribe(channel)
        reply = await self._request(message)
        if reply.get("successful") is not True:
            raise ServerError("Unsubscribe request failed.", reply)
        self._subscriptions.pop(channel, None)

    async def publish(self, channel: str, data: object) -> Message:
        """Publish ``data`` to ``channel`` and return the server's reply."""
        self._check_open()
        validate_channel(channel)
        message = self._factory.publish(channel, data)
        reply = await self._request(message)
        if reply.get("successful") is False:
            raise ServerError("Publish request failed.", reply)
        return reply

    async def receive(self) -> Message:
        """Return the next message, waiting for one.

        Raises ServerError for a failed resubscription or a session closed by the server,
        TransportTimeoutError after ``connection_timeout`` without a connection, and
        ClientInvalidOperation once closed with nothing left to return.
        """
        while True:
            if self._buffer and not self._errors:
                message = self._buffer.popleft()
                self._pending_bytes -= self._sizes.popleft()
                self._space.set()
                if self._session_state.paused and not self._full():
                    self._room.set()
                return message
            await self._wait_for_message()

    async def receive_many(self, limit: int) -> list[Message]:
        """Return between 1 and ``limit`` messages, waiting for at least one."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        while True:
            if self._buffer and not self._errors:
                buffer = self._buffer
                count = min(limit, len(buffer))
                messages = [buffer.popleft() for _ in range(count)]
                sizes = self._sizes
                self._pending_bytes -= sum(sizes.popleft() for _ in range(count))
                self._space.set()
                if self._session_state.paused and not self._full():
                    self._room.set()
                return messages
            await self._wait_for_message()

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except ClientInvalidOperation:
            raise StopAsyncIteration from None

    # -- receive helpers ---------------------------------------------------------------------

    async def _wait_for_message(self) -> None:
        # Order: failed resubscriptions first (urgent, nothing is lost by raising them), then
        # buffered messages, then the end of the session.
        if self._errors:
            raise self._errors.popleft()
        if self._buffer:
            return
        if self._fatal is not None:
            # Raised once; afterwards the closed client says ClientInvalidOperation.
            fatal, self._fatal = self._fatal, None
            await self.close()
            raise fatal
        if self._session_state.closed:
            raise ClientInvalidOperation("The client is closed and there are no pending messages.")
        timeout = None
        if self.connection_timeout is not None and self._unconnected_since is not None:
            remaining = self._unconnected_since + self.connection_timeout - self._now()
            if remaining <= 0:
                raise TransportTimeoutError(
                    f"Lost connection with the server; not restored in {self.connection_timeout}s."
                )
            timeout = remaining
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()

    # -- background loop ---------------------------------------------------------------------

    async def _run(self, decision: Decision) -> None:
        error: str | None = None
        try:
            while self._fatal is None and not self._session_state.closing:
                if decision.action is Action.CLOSE:
                    break
                if decision.reason is not None:
                    self._emit(Reconnecting(decision.reason, decision.delay, error))
                if self.connection_timeout is not None and decision.delay > self.connection_timeout:
                    # A long advised interval is time without a connection: receive() raises
                    # after connection_timeout (readiness says so) instead of parking silently.
                    self._mark_unconnected()
                if decision.delay > 0:
                    await asyncio.sleep(decision.delay)  # backoff, not synchronisation
                if decision.authenticate:
                    await self._authenticate()
                if decision.action is Action.HANDSHAKE:
                    decision, error = await self._handshake_step()
                    continue
                resume = await self._wait_for_room()
                if resume is not None:
                    decision, error = resume
                    continue
                decision, error = await self._connect_step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an extension's failure: report, never vanish
            log.exception("CometD client task failed")
            self._set_fatal(ClientError(f"CometD client task failed: {exc!r}"))

    async def _handshake_step(self) -> tuple[Decision, str | None]:
        self._session_state.apply(Event.SESSION_LOST)
        self._mark_unconnected()
        if self._factory.client_id is not None:
            # The previous session ends here; what the server kept for its ack goes with it.
            self._note_ack_session_end()
            self._factory.client_id = None
        try:
            reply = await self._handshake()
        except TransportError as exc:
            return self._transport_failure(exc, handshaking=True), str(exc)
        if reply.get("successful") is not True:
            self._merge_advice(reply.get("advice"))
            if self._is_auth_failure(reply):
                self._emit(AuthFailed(failure_text(reply)))
            decision = decide_handshake(
                reply,
                self._advice,
                attempt=self._next_attempt(),
                rnd=self._rnd,
                has_auth=self.auth is not None,
                backoff=self._backoff,
            )
            if decision.action is Action.CLOSE:
                self._set_fatal(ServerError(_CLOSED_BY_SERVER, reply))
            return decision, failure_text(reply)
        try:
            await self._accept_handshake(reply)
            await self._resubscribe()
        except ClientError as exc:
            self._set_fatal(exc)
            return Decision(Action.CLOSE), str(exc)
        except TransportError as exc:
            return self._transport_failure(exc, handshaking=True), str(exc)
        return POLL, None

    async def _connect_step(self) -> tuple[Decision, str | None]:
        if self._replay_lost:
            # A WebSocket frame was lost outside this loop's own request (a push).
            return Decision(Action.HANDSHAKE, 0.0, "malformed"), "undecodable WebSocket frame"
        self._polling = True
        sent_at = self._now()
        delivered = self._delivered
        try:
            reply = await self._connect()
        except TransportError as exc:
            if self._session_state.closing:
                return Decision(Action.CLOSE), None
            self._session_state.apply(Event.SESSION_LOST)
            self._mark_unconnected()
            decision = self._transport_failure(exc, handshaking=False)
            if self._response_lost(exc):
                # Events of that response are gone from the server: resume from the confirmed
                # position in a new session before accepting any later event.
                decision = replace(decision, action=Action.HANDSHAKE)
            return decision, str(exc)
        finally:
            self._polling = False
        if self._session_state.closing:
            # close() disconnected while this connect was held; its events are delivered.
            return Decision(Action.CLOSE), None
        multiple_clients = self._advice.multiple_clients
        self._merge_advice(reply.get("advice"), self._transport_type())
        if self._advice.multiple_clients and not multiple_clients:
            # Another session shares our cookie (CometD maxSessionsPerBrowser): polls are no
            # longer held, so latency and request rate go up.
            log.warning("the server reports multiple clients sharing this browser session")
        successful = reply.get("successful") is True
        if not successful:
            self._session_state.apply(Event.SESSION_LOST)
            self._mark_unconnected()
            if self._is_auth_failure(reply):
                self._emit(AuthFailed(failure_text(reply)))
        decision = self._decide_connect(reply)
        if successful:
            self._on_connected()
            self._ack_resend_due = False  # this reply carried what the server still held
            self._frame_lost = False
            if decision.action is Action.CONNECT:
                self._rehandshakes = 0  # the session works
                decision = self._pace(decision, sent_at, delivered)
        elif decision.reason == "unknown_session" and (
            self._paused_since_connect or self._lost_to_held_response()
        ):
            # The session expired because we stopped fetching while the buffer was full.
            decision = replace(decision, reason="buffer_full")
        if decision.action is Action.CLOSE:
            self._set_fatal(ServerError(_CLOSED_BY_SERVER, reply))
        return decision, failure_text(reply)

    def _decide_connect(self, reply: Message) -> Decision:
        successful = reply.get("successful") is True
        return decide_connect(
            reply,
            self._advice,
            attempt=0 if successful else self._next_attempt(),
            rnd=self._rnd,
            now=self._now(),
            unconnected_since=self._unconnected_since,
            has_auth=self.auth is not None,
            backoff=self._backoff,
            rehandshakes=self._rehandshakes,
        )

    def _pace(self, decision: Decision, sent_at: float, delivered: int) -> Decision:
        """Space polls that come back at once and empty (a server not holding them)."""
        if self._delivered != delivered or self._now() - sent_at >= _INSTANT:
            self._instant_streak = 0
            return decision
        self._instant_streak += 1
        spacing = instant_reply_spacing(self._instant_streak)
        return decision if decision.delay >= spacing else replace(decision, delay=spacing)

    def _response_lost(self, exc: TransportError) -> bool:
        """A /meta/connect failed: decide what its lost events cost. True: re-handshake."""
        if self._frame_lost:
            # We closed the socket after an undecodable frame, already counted.
            self._frame_lost = False
            return self._replay_lost
        if isinstance(exc, TransportConnectionClosed) and isinstance(
            exc.__cause__, aiohttp.ClientConnectorError
        ):
            return False  # never reached the server: nothing was sent to us
        return self._on_lost_response(str(exc))

    def _on_lost_response(self, detail: str) -> bool:
        if any(e.resumes_by_resubscribing() for e in self.extensions):
            self._replay_lost = True
            return True
        if any(e.can_shed() for e in self.extensions):
            self._ack_resend_due = True  # the server re-sends every unacknowledged message
            return False
        log.warning("a /meta/connect response was lost; its events may be lost: %s", detail)
        self._emit(PossibleGap("response_lost", detail))
        return False

    def _holds_ack(self) -> bool:
        return self._ack_resend_due or any(e.holds_ack() for e in self.extensions)

    def _note_ack_session_end(self) -> None:
        """An acknowledged session ends: count it when the server may still have held
        messages we never received (a lost response, or messages shed while paused)."""
        if self._ack_resend_due or any(e.awaits_resend() for e in self.extensions):
            log.warning("an acknowledged session ended with messages the server still held")
            self._emit(PossibleGap("ack_held", None))
        self._ack_resend_due = False

    def _merge_advice(self, raw: object, connection_type: str | None = None) -> None:
        self._advice = self._advice.merge(raw, connection_type)
        if self._advice.clamped and not self._clamp_logged:
            self._clamp_logged = True
            log.warning(
                "the server advised an interval or timeout over %.0f s; clamped: %r",
                MAX_ADVICE,
                raw,
            )

    def _transport_failure(self, exc: TransportError, *, handshaking: bool) -> Decision:
        self._first_connect = True
        return decide_transport_error(
            _reason_of(exc),
            self._advice,
            attempt=self._next_attempt(),
            rnd=self._rnd,
            now=self._now(),
            unconnected_since=self._unconnected_since,
            handshaking=handshaking,
            backoff=self._backoff,
        )

    async def _wait_for_room(self) -> tuple[Decision, str | None] | None:
        """Back-pressure: hold the next /meta/connect while the buffer is full.

        With a shedding extension, keep-alive connects go on meanwhile; one that fails ends
        the pause with its decision (the client reconnects, then pauses again if still full).
        """
        if not self._full():
            return None
        self._paused_since_connect = True
        self._session_state.apply(Event.PAUSE)
        self._emit(FetchPaused(len(self._buffer)))
        while self._full():
            self._room.clear()
            shedder = next((e for e in self.extensions if e.can_shed()), None)
            if shedder is None:
                await self._room.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._keepalive_pace()):
                    await self._room.wait()
            if self._full():
                failed = await self._keep_alive(shedder)
                if failed is not None:
                    # The keep-alive's failure already ended the pause in the session state.
                    self._emit(FetchResumed(len(self._buffer)))
                    return failed
        self._session_state.apply(Event.RESUME)
        self._emit(FetchResumed(len(self._buffer)))
        if self._now() - self._last_connected > self._advice.session_expiry:
            self._mark_unconnected()
            return Decision(Action.HANDSHAKE, 0.0, "buffer_full"), None
        return None

    async def _keep_alive(self, shedder: Extension) -> tuple[Decision, str | None] | None:
        """One /meta/connect while paused; the shedder removes the reply's new messages."""
        shedder.set_shedding(True)
        try:
            decision, error = await self._connect_step()
        finally:
            shedder.set_shedding(False)
        if decision.action is not Action.CONNECT or decision.reason is not None:
            return decision, error
        # Still paused: a session lost from now on is lost to the full buffer.
        self._paused_since_connect = True
        self._session_state.apply(Event.PAUSE)
        return None

    def _keepalive_pace(self) -> float:
        # Well inside the server's maxInterval (counted from each reply); the held timeout
        # bounds it too, for servers that do not advertise maxInterval (our default is 10 s).
        advice = self._advice
        pace = advice.max_interval / 3
        if advice.timeout > 0:
            pace = min(pace, advice.timeout / 2)
        return max(pace, _MIN_KEEPALIVE)

    # -- protocol steps ----------------------------------------------------------------------

    async def _handshake(self) -> Message:
        types = [t.value for t in self._connection_types]
        if ConnectionType.LONG_POLLING.value not in types:
            # The handshake itself always goes over long-polling (every server has it).
            types.append(ConnectionType.LONG_POLLING.value)
        message = self._factory.handshake(types, self._advice.timeout)
        transport = self._get_transport(ConnectionType.LONG_POLLING)
        replies = await transport.send([message], deadline=self._network_delay)
        reply = replies.get(message["id"])
        if reply is None:
            raise MalformedResponseError("no reply to /meta/handshake")
        return reply

    async def _accept_handshake(self, reply: Message) -> None:
        client_id = reply.get("clientId")
        if not isinstance(client_id, str) or not client_id:
            raise MalformedResponseError("handshake reply without clientId")
        offered = reply.get("supportedConnectionTypes")
        server_types = (
            [t for t in offered if isinstance(t, str)]
            if isinstance(offered, list)
            else [ConnectionType.LONG_POLLING.value]
        )
        allowed = [
            t
            for t in self._connection_types
            if not (t is ConnectionType.WEBSOCKET and self._websocket_refused)
        ]
        chosen = next((t for t in allowed if t.value in server_types), None)
        if chosen is None:
            raise ClientError(
                "None of the connection types offered by the server "
                f"{server_types} are allowed by the client {[t.value for t in allowed]}."
            )
        self._factory.client_id = client_id
        self._merge_advice(reply.get("advice"), chosen.value)
        self._transport = self._get_transport(chosen)
        self._first_connect = True
        self._rehandshakes += 1
        self._replay_lost = False
        self._ack_resend_due = False
        self._emit(Handshaken(client_id, chosen.value))

    async def _resubscribe(self) -> None:
        channels = list(self._subscriptions)
        if not channels:
            return
        messages = [self._factory.subscribe(channel) for channel in channels]
        replies = await self._send(messages, self._network_delay)
        for channel, message in zip(channels, messages, strict=True):
            reply = replies.get(message["id"])
            if reply is not None and reply.get("successful") is True:
                continue
            # Never dropped silently: raised from receive() and reported.
            self._subscriptions.pop(channel, None)
            response = reply or {"channel": message["channel"], "subscription": channel}
            error = response.get("error")
            self._emit(SubscriptionFailed(channel, error if isinstance(error, str) else None))
            self._errors.append(ServerError(f"Resubscription to {channel} failed.", response))
            self._wakeup.set()

    async def _connect(self) -> Message:
        transport = self._require_transport()
        first = self._first_connect
        message = self._factory.connect(transport.connection_type.value, first=first)
        # The poll deadline is always the server's hold time plus a network allowance, even
        # when the last advice carried no timeout (advice is merged field by field).
        deadline = (0.0 if first else self._advice.timeout) + self._network_delay
        replies = await self._send([message], deadline)
        reply = replies.get(message["id"])
        if reply is None:
            raise MalformedResponseError("no reply to /meta/connect")
        return reply

    async def _request(self, message: Message) -> Message:
        replies = await self._send([message], self._network_delay)
        reply = replies.get(message["id"])
        if reply is None:
            raise MalformedResponseError(f"no reply to {message['channel']}")
        return reply

    async def _send(self, payload: list[Message], deadline: float) -> dict[str, Message]:
        transport = self._require_transport()
        try:
            return await transport.send(payload, deadline=deadline)
        except WebSocketUpgradeRefused as exc:
            if ConnectionType.LONG_POLLING not in self._connection_types:
                raise
            # Sticky fallback: this client stays on long-polling from now on.
            self._websocket_refused = True
            fallback = self._get_transport(ConnectionType.LONG_POLLING)
            self._transport = fallback
            self._emit(Reconnecting("transport_fallback", 0.0, str(exc)))
            for message in payload:
                if "connectionType" in message:
                    message["connectionType"] = fallback.connection_type.value
            return await fallback.send(payload, deadline=deadline)

    async def _authenticate(self) -> None:
        if self.auth is None:
            return
        async with self._auth_lock:
            try:
                await self.auth.authenticate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next handshake fails and backs off again
                log.warning("authenticate() failed: %r", exc)
                self._emit(AuthFailed(repr(exc)))
                return
        # An open WebSocket still carries the old credentials of its upgrade request: close it
        # so the next send upgrades again with the fresh headers.
        websocket = self._transports.get(ConnectionType.WEBSOCKET)
        if websocket is not None:
            await websocket.close()

    # -- transport hooks ---------------------------------------------------------------------

    async def _outgoing(self, payload: list[Message], headers: MutableMapping[str, str]) -> None:
        for extension in self.extensions:
            await extension.outgoing(payload, headers)
        if self.auth is not None:
            await self.auth.outgoing(payload, headers)

    async def _incoming(self, payload: list[Message], headers: Mapping[str, str] | None) -> None:
        self._screen(payload)
        if self.auth is not None:
            await self._extension_incoming(self.auth, payload, headers)
        for extension in self.extensions:
            await self._extension_incoming(extension, payload, headers)

    async def _extension_incoming(
        self, extension: Extension, payload: list[Message], headers: Mapping[str, str] | None
    ) -> None:
        try:
            await extension.incoming(payload, headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            # An extension's bug must neither kill the client task nor drop the payload.
            log.exception("CometD extension %s failed on an incoming payload", extension)

    def _screen(self, payload: list[Message]) -> None:
        """Drop events on channels this session did not subscribe to (reported, never
        delivered), before any extension (an ack must not wait for them)."""
        if not self._only_subscribed:
            return
        keep: list[Message] | None = None
        for index, message in enumerate(payload):
            if is_event(message) and not self._subscribed_to(message["channel"]):
                if keep is None:
                    keep = payload[:index]
                self._on_skipped("unsubscribed_channel", str(message["channel"])[:200])
            elif keep is not None:
                keep.append(message)
        if keep is not None:
            payload[:] = keep

    def _subscribed_to(self, channel: str) -> bool:
        if channel in self._subscriptions or channel in self._subscribing:
            return True
        bare = channel.split("?", 1)[0]
        return any(
            channel_matches(pattern.split("?", 1)[0], bare)
            for pattern in (*self._subscriptions, *self._subscribing)
        )

    def _full(self) -> bool:
        if 0 < self._max_pending <= len(self._buffer):
            return True
        limit = self._max_pending_bytes
        return limit is not None and self._pending_bytes >= limit

    def _admits(self, count: int, size: int) -> bool:
        """Whether ``count`` more events of ``size`` bytes in all fit in the buffer now."""
        buffered = len(self._buffer)
        if (not buffered and count == 1) or self._session_state.closing:
            # One message always fits an empty buffer, however large. Closing: the rest of a
            # held response is taken (the server counts it as delivered; receive() still
            # returns the buffer after close), not left in a socket about to be closed.
            return True
        if 0 < self._max_pending < buffered + count:
            return False
        limit = self._max_pending_bytes
        return limit is None or self._pending_bytes + size <= limit

    async def _wait_room(self, size: int) -> None:
        """Hold a transport until one more event of ``size`` bytes fits in the buffer.

        With an extension that can shed, on the long-poll ``/meta/connect``, the hold lasts at
        most one keep-alive pace: a server that acknowledges counts a response as sent once
        it is in the socket and expires a session that reads no further. The rest of the
        response is then shed, message by message as it is decoded (the server keeps it and
        sends it again): memory stays flat however large the re-sent backlog.
        """
        shedder = self._response_shedder()
        session = self._session_state
        if shedder is not None and (self._shedding_response is not None or session.paused):
            return  # this response is being shed (a keep-alive, or held too long already)
        if session.paused:  # already paused (the background task): no second event
            while not self._admits(1, size):
                self._space.clear()
                await self._space.wait()
            return
        session.apply(Event.HOLD)
        self._emit(FetchPaused(len(self._buffer)))
        try:
            async with asyncio.timeout(self._keepalive_pace() if shedder else None):
                while not self._admits(1, size) and not session.closed:
                    self._space.clear()
                    await self._space.wait()
        except TimeoutError:
            assert shedder is not None  # no timeout without a shedder
            shedder.set_shedding(True)
            self._shedding_response = shedder
        finally:
            self._held_until = self._now()
            session.apply(Event.RELEASE)
            self._emit(FetchResumed(len(self._buffer)))

    def _lost_to_held_response(self) -> bool:
        """A session lost now may have expired while a response was held (buffer full): the
        server counts its expiry from when it sent the response, not from when we read it."""
        held = self._held_until
        return held is not None and self._now() - held <= self._advice.session_expiry

    def _response_shedder(self) -> Extension | None:
        transport = self._transport
        if not self._polling or transport is None:
            return None
        if transport.connection_type is not ConnectionType.LONG_POLLING:
            return None
        return next((e for e in self.extensions if e.can_shed()), None)

    def _response_done(self) -> None:
        shedder, self._shedding_response = self._shedding_response, None
        if shedder is not None:
            shedder.set_shedding(False)

    def _deliver(self, messages: list[Message], sizes: list[int]) -> None:
        """Take events (and unsolicited replies) the transport did not match to a request."""
        if self._replay_lost:
            # Replayed from the confirmed position by the coming re-handshake.
            return
        buffer = self._buffer
        buffered = self._sizes
        before = len(buffer)
        added = 0
        for message, size in zip(messages, sizes, strict=True):
            if is_event(message):
                buffer.append(message)
                buffered.append(size)
                added += size
            elif message.get("channel") == META_DISCONNECT and not self._session_state.closing:
                # Server-side close: the session ends; reported, never ignored.
                self._set_fatal(ServerError(_CLOSED_BY_SERVER, message))
            # Anything else is a stale or unsolicited reply: discarded.
        if len(buffer) != before:
            self._delivered += len(buffer) - before
            self._pending_bytes += added
            self._wakeup.set()

    def _on_skipped(self, reason: str, detail: str) -> None:
        log.warning("skipped a server message (%s): %s", reason, detail)
        self._emit(MessageSkipped(reason, detail))

    def _on_websocket_skipped(self, reason: str, detail: str) -> None:
        self._on_skipped(reason, detail)
        if reason != "invalid_json" or self._factory.client_id is None:
            return
        # An undecodable frame may have carried events (a long-polling body that fails fails
        # its request; a frame is just skipped by the transport).
        self._on_lost_response(f"undecodable WebSocket frame: {detail}")
        # Close the socket: a reply in that frame is lost too, so the held connect fails at
        # once (a replay session then re-handshakes) instead of after its deadline.
        websocket = self._transports.get(ConnectionType.WEBSOCKET)
        if websocket is not None:
            self._frame_lost = True
            task = asyncio.get_running_loop().create_task(websocket.close())
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

    # -- small helpers -----------------------------------------------------------------------

    def _get_transport(self, connection_type: ConnectionType) -> Transport:
        transport = self._transports.get(connection_type)
        if transport is None:
            if self._session is None:
                raise ClientInvalidOperation("The client is not open.")
            config = TransportConfig(
                url=self.url,
                session=self._session,
                json_dumps=self._json_dumps,
                json_loads=self._json_loads,
                max_message_size=self._max_message_size,
                max_response_size=self._max_response_size,
                max_frame_size=self._max_frame_size,
                network_delay=self._network_delay,
                heartbeat=self._heartbeat,
                headers=self._headers,
                ssl=True if self.ssl is None else self.ssl,
            )
            on_skipped = (
                self._on_websocket_skipped
                if connection_type is ConnectionType.WEBSOCKET
                else self._on_skipped
            )
            hooks = TransportHooks(
                self._outgoing,
                self._incoming,
                self._deliver,
                on_skipped,
                self._admits,
                self._wait_room,
                self._response_done,
            )
            transport = create_transport(connection_type, config, hooks)
            self._transports[connection_type] = transport
        return transport

    def _require_transport(self) -> Transport:
        if self._transport is None:
            raise ClientInvalidOperation("The client is not connected.")
        return self._transport

    def _transport_type(self) -> str | None:
        return self._transport.connection_type.value if self._transport else None

    def _check_open(self) -> None:
        if self._session_state.closed:
            raise ClientInvalidOperation("The client is closed.")

    def _is_auth_failure(self, reply: Message) -> bool:
        return classify_failure(reply).kind is FailureKind.AUTH

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _next_attempt(self) -> int:
        attempt = self._attempt
        self._attempt += 1
        return attempt

    def _mark_unconnected(self) -> None:
        if self._unconnected_since is None:
            self._unconnected_since = self._now()
            # Waiting receivers recompute their deadline from connection_timeout.
            self._wakeup.set()

    def _on_connected(self) -> None:
        self._attempt = 0
        self._first_connect = False
        self._unconnected_since = None
        self._paused_since_connect = False
        self._last_connected = self._now()
        # PAUSED: a keep-alive connect; the client stays paused (FetchResumed comes later).
        before = self._session_state.state
        if self._session_state.apply(Event.CONNECT_OK) is not before:
            self._emit(Connected())

    def _set_fatal(self, error: CometdError) -> None:
        if self._fatal is None:
            self._fatal = error
            if isinstance(error, ServerError):
                self._emit(ServerClosed(error.error))
        self._wakeup.set()

    def _emit(self, event: ClientEvent) -> None:
        if self._listener is None:
            return
        try:
            self._listener(event)
        except Exception:  # a listener bug must never kill the client
            log.exception("CometD client listener failed on %r", event)

    def _reset(self) -> None:
        self._fatal = None
        self._errors.clear()
        self._advice = Advice()
        self._factory.client_id = None
        self._first_connect = True
        self._attempt = 0
        self._unconnected_since = None
        self._paused_since_connect = False
        self._instant_streak = 0
        self._rehandshakes = 0
        self._ack_resend_due = False
        self._replay_lost = False
        self._frame_lost = False
        self._subscribing.clear()
        self._held_until = None

    async def _teardown(self) -> None:
        for transport in self._transports.values():
            with contextlib.suppress(Exception):
                await transport.close()
        self._transports.clear()
        self._transport = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._session_state.apply(Event.TEARDOWN)
        self._room.set()
        self._space.set()
        self._wakeup.set()
