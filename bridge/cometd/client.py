"""The CometD client: aiocometd's documented API on a sans-I/O core and thin transports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

import aiohttp

from .client_core import _CLOSED_BY_SERVER, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_RESPONSE_SIZE
from .connector import Connector
from .events import AuthFailed, SubscriptionFailed
from .exceptions import ClientInvalidOperation, CometdError, ServerError, TransportTimeoutError
from .protocol import Action, ConnectionType, Message, failure_text, validate_channel
from .session_state import ClientState, Event


__all__ = ["Client", "ClientState", "DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_MAX_RESPONSE_SIZE"]

log = logging.getLogger(__name__)


class Client(Connector):
    """A CometD client that keeps a session open in the background.

    Built in layers (see :mod:`.client_core`): this class is the public API; the background
    loop is :class:`~.connector.Connector`, delivery and the buffer bound
    :class:`~.buffer.PrefetchBuffer`, transports and extensions
    :class:`~.wiring.TransportWiring`, lost responses :class:`~.losses.LostResponses`.

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
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the pending messages as received (their encoded form; exact)."""
        return self._pending.bytes

    @property
    def has_pending_messages(self) -> bool:
        return bool(self._pending)

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
        if self._pending:
            # Not lost: a closed client still returns its buffer from receive().
            log.info("CometD client closed with %d messages still buffered", len(self._pending))
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
            if self._pending and not self._errors:
                message = self._pending.pop()
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
            if self._pending and not self._errors:
                messages = self._pending.pop_many(limit)
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
        if self._pending:
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

    # -- helpers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._session_state.closed:
            raise ClientInvalidOperation("The client is closed.")

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
