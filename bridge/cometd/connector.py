"""The background handshake/connect loop: its steps, its pacing and back-pressure.

Every decision comes from the sans-I/O :mod:`.protocol` (advice, failures, backoff); this
module performs it: sends the handshake or connect, waits, pauses while the buffer is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from .client_core import _CLOSED_BY_SERVER
from .events import (
    AuthFailed,
    Connected,
    FetchPaused,
    FetchResumed,
    Handshaken,
    Reconnecting,
    SubscriptionFailed,
)
from .exceptions import (
    ClientError,
    HTTPStatusError,
    MalformedResponseError,
    ServerError,
    TransportError,
    TransportTimeoutError,
    WebSocketUpgradeRefused,
)
from .extensions import Extension
from .protocol import (
    MAX_ADVICE,
    POLL,
    Action,
    ConnectionType,
    Decision,
    Message,
    decide_connect,
    decide_handshake,
    decide_transport_error,
    failure_text,
    instant_reply_spacing,
)
from .session_state import Event, State
from .wiring import TransportWiring


__all__ = ["Connector"]


#: The client's one logger, whichever of its modules logs (operators filter on this name).
log = logging.getLogger("bridge.cometd.client")

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


class Connector(TransportWiring):
    """The background loop of the session (handshake, connect, pause, keep-alive)."""

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
        self._emit(FetchPaused(len(self._pending)))
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
                    self._emit(FetchResumed(len(self._pending)))
                    return failed
        self._session_state.apply(Event.RESUME)
        self._emit(FetchResumed(len(self._pending)))
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

    def _merge_advice(self, raw: object, connection_type: str | None = None) -> None:
        self._advice = self._advice.merge(raw, connection_type)
        if self._advice.clamped and not self._clamp_logged:
            self._clamp_logged = True
            log.warning(
                "the server advised an interval or timeout over %.0f s; clamped: %r",
                MAX_ADVICE,
                raw,
            )

    def _on_connected(self) -> None:
        self._attempt = 0
        self._first_connect = False
        self._unconnected_since = None
        self._paused_since_connect = False
        self._last_connected = self._now()
        # PAUSED: a keep-alive connect; the client stays paused (FetchResumed comes later).
        session = self._session_state
        was_connected = session.connected or session.state is State.PAUSED
        session.apply(Event.CONNECT_OK)
        if session.connected and not was_connected:
            self._emit(Connected())

    def _next_attempt(self) -> int:
        attempt = self._attempt
        self._attempt += 1
        return attempt

    def _mark_unconnected(self) -> None:
        if self._unconnected_since is None:
            self._unconnected_since = self._now()
            # Waiting receivers recompute their deadline from connection_timeout.
            self._wakeup.set()
