"""The client's state and the helpers every part of it shares (the base of :class:`Client`).

The client is built in layers, each a module with one job: this base (options, state,
events), :mod:`.losses` (what a lost response costs), :mod:`.buffer` (the bounded prefetch
buffer and the holds that keep it bounded), :mod:`.wiring` (transports, extensions, the
screening of incoming messages), :mod:`.connector` (the handshake/connect loop and its
pacing) and :mod:`.client` (the public aiocometd-style API).

The layers form one object, each class inheriting the one below (``Client`` -> ``Connector``
-> ``TransportWiring`` -> ``PrefetchBuffer``/``LostResponses`` -> ``ClientCore``): a layer
calls only downwards, and every attribute is declared in :meth:`ClientCore.__init__`, so the
whole state of a client reads in one place. Where the session is (open, paused, closing...)
is not a flag here but :class:`~.session_state.SessionState`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from .events import ClientEvent, Listener, ServerClosed
from .exceptions import ClientInvalidOperation, CometdError, ServerError
from .extensions import AuthExtension, Extension
from .pending import PendingMessages
from .protocol import (
    Advice,
    Backoff,
    ConnectionType,
    FailureKind,
    Message,
    MessageFactory,
    classify_failure,
)
from .session_state import SessionState
from .transports import Transport


__all__ = ["ClientCore", "DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_MAX_RESPONSE_SIZE"]


#: The client's one logger, whichever of its modules logs (operators filter on this name).
log = logging.getLogger("bridge.cometd.client")

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_RESPONSE_SIZE = 32 * 1024 * 1024
_CLOSED_BY_SERVER = "Connection closed by the server"
# Floor of the keep-alive pace while paused: the server answers at once while it holds
# unacknowledged messages, so a zero pace would be a hot loop.
_MIN_KEEPALIVE = 0.1


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


class ClientCore:
    """Options, state and shared helpers of :class:`~bridge.cometd.client.Client`."""

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
        # Prefetched messages not yet returned by receive(), within the buffer's bound.
        self._pending = PendingMessages(max_pending_count, max_pending_bytes)
        self._space = asyncio.Event()  # set when receive() takes from the buffer
        self._held_until: float | None = None  # when the last hold of a response ended
        # The extension shedding the rest of the current long-poll response (buffer full).
        self._shedding_response: Extension | None = None
        self._errors: deque[CometdError] = deque()  # failed resubscriptions, for receive()
        self._fatal: CometdError | None = None  # what ends the session, raised by receive()
        self._wakeup = asyncio.Event()  # receive() waiters: a message, an error, or a deadline
        self._room = asyncio.Event()  # the paused background task: the buffer has room
        # The buffer filled (a pause) since the last successful connect: a session lost now
        # expired because we stopped fetching (history, not the current state).
        self._paused_since_connect = False
        # A /meta/connect of the background task is in flight (close() disconnects first so
        # the server answers it, instead of cancelling it and losing what it flushed).
        self._polling = False
        # The next /meta/connect asks for an immediate reply (after a handshake or a transport
        # failure; an unsuccessful reply keeps the pace of the previous connect).
        self._first_connect = True
        self._attempt = 0  # consecutive failures: the backoff step
        # Since when no connect has succeeded (None: connected); receive() raises after
        # connection_timeout of it.
        self._unconnected_since: float | None = None
        self._last_connected = 0.0  # loop time of the last successful connect
        self._auth_lock = asyncio.Lock()  # one authenticate() at a time
        self._task: asyncio.Task[None] | None = None  # the background loop (connector.py)
        self._clamp_logged = False  # a clamped advice is logged once per client
        self._instant_streak = 0  # consecutive successful connect replies, instant and empty
        self._delivered = 0  # events taken by _deliver (to tell an empty reply)
        self._rehandshakes = 0  # handshakes since a session last worked
        # A lost response on an ack session: the server re-sends its messages in a later reply.
        self._ack_resend_due = False
        # A replay session lost a response: events are discarded until the re-handshake, whose
        # subscriptions replay them from the confirmed position.
        self._replay_lost = False
        self._frame_lost = False  # an undecodable frame closed the WebSocket
        self._side_tasks: set[asyncio.Task[None]] = set()  # socket closes, kept referenced

    def _emit(self, event: ClientEvent) -> None:
        if self._listener is None:
            return
        try:
            self._listener(event)
        except Exception:  # a listener bug must never kill the client
            log.exception("CometD client listener failed on %r", event)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _set_fatal(self, error: CometdError) -> None:
        if self._fatal is None:
            self._fatal = error
            if isinstance(error, ServerError):
                self._emit(ServerClosed(error.error))
        self._wakeup.set()

    def _is_auth_failure(self, reply: Message) -> bool:
        return classify_failure(reply).kind is FailureKind.AUTH

    def _full(self) -> bool:
        return self._pending.full()

    def _keepalive_pace(self) -> float:
        # Well inside the server's maxInterval (counted from each reply); the held timeout
        # bounds it too, for servers that do not advertise maxInterval (our default is 10 s).
        advice = self._advice
        pace = advice.max_interval / 3
        if advice.timeout > 0:
            pace = min(pace, advice.timeout / 2)
        return max(pace, _MIN_KEEPALIVE)

    def _require_transport(self) -> Transport:
        if self._transport is None:
            raise ClientInvalidOperation("The client is not connected.")
        return self._transport

    def _transport_type(self) -> str | None:
        return self._transport.connection_type.value if self._transport else None

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
