"""The client's session state as an explicit transition table (sans-I/O).

One :class:`SessionState` per :class:`~bridge.cometd.client.Client` says where the session is;
the asyncio client reports what happened (an :class:`Event`) and reads the state back instead
of keeping flags beside it. An event that is not allowed in the current state raises
:class:`IllegalTransition`: a missing row is a bug to find in a test, not a state to guess.

Two kinds of pause look the same from outside (``Client.state == "paused"``) but end
differently, so they are separate states here:

- ``PAUSED``: the background task holds the next ``/meta/connect`` while the buffer is full;
  when room is made the session is connected again (``RESUME``).
- ``HELD_*``: a transport holds a response (or frame) half-read until the buffer has room;
  when it lets go (``RELEASE``) the session is back where it was before the hold (the first
  connect after a handshake is still to be confirmed, so a ``Connected`` event still follows).
"""

from __future__ import annotations

from enum import StrEnum


__all__ = [
    "ClientState",
    "State",
    "Event",
    "TRANSITIONS",
    "IllegalTransition",
    "SessionState",
]


class ClientState(StrEnum):
    """Where the client is in its life (``Client.state``): the public view of :class:`State`."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    PAUSED = "paused"
    CLOSING = "closing"
    CLOSED = "closed"


class State(StrEnum):
    IDLE = "idle"  # never opened
    CONNECTING = "connecting"  # open(): the first handshake and connect
    CONNECTED = "connected"  # a /meta/connect kept the session
    RECONNECTING = "reconnecting"  # a failure or a re-handshake: no confirmed session
    PAUSED = "paused"  # the buffer is full: no /meta/connect is sent (keep-alives aside)
    HELD_CONNECTING = "held_connecting"  # a transport holds a response, from CONNECTING
    HELD_CONNECTED = "held_connected"  # ... from CONNECTED
    HELD_RECONNECTING = "held_reconnecting"  # ... from RECONNECTING
    CLOSING = "closing"  # close() runs: nothing reopens the session
    CLOSED = "closed"  # resources released; open() may start again


class Event(StrEnum):
    OPEN = "open"  # open() starts
    CONNECT_OK = "connect_ok"  # a successful /meta/connect reply that keeps the session
    SESSION_LOST = "session_lost"  # a failed connect or handshake, or a re-handshake begins
    PAUSE = "pause"  # the background task stops fetching: the buffer is full
    RESUME = "resume"  # the background task fetches again: the buffer has room
    HOLD = "hold"  # a transport holds a response until the buffer has room
    RELEASE = "release"  # the transport lets go of the response
    CLOSE = "close"  # close() starts
    TEARDOWN = "teardown"  # every resource is released (close(), or open() failed)


S = State
E = Event

_HELD = {S.CONNECTING: S.HELD_CONNECTING, S.CONNECTED: S.HELD_CONNECTED}
_HELD[S.RECONNECTING] = S.HELD_RECONNECTING
_OPEN_STATES = (
    S.CONNECTING,
    S.CONNECTED,
    S.RECONNECTING,
    S.PAUSED,
    S.HELD_CONNECTING,
    S.HELD_CONNECTED,
    S.HELD_RECONNECTING,
)

#: Every allowed ``(state, event) -> next state``. Anything else is illegal.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.IDLE, E.OPEN): S.CONNECTING,
    (S.CLOSED, E.OPEN): S.CONNECTING,
    # A keep-alive connect while paused keeps the pause; a reply taken while closing (close()
    # disconnects while a connect is held) does not reopen the session.
    (S.CONNECTING, E.CONNECT_OK): S.CONNECTED,
    (S.CONNECTED, E.CONNECT_OK): S.CONNECTED,
    (S.RECONNECTING, E.CONNECT_OK): S.CONNECTED,
    (S.PAUSED, E.CONNECT_OK): S.PAUSED,
    (S.CLOSING, E.CONNECT_OK): S.CLOSING,
    # On WebSocket a frame may carry the connect reply ahead of events held for room: the
    # session is connected while the rest of the frame waits.
    (S.HELD_CONNECTING, E.CONNECT_OK): S.HELD_CONNECTED,
    (S.HELD_RECONNECTING, E.CONNECT_OK): S.HELD_CONNECTED,
    (S.HELD_CONNECTED, E.CONNECT_OK): S.HELD_CONNECTED,
    # A failure ends any pause or hold: the session must be rebuilt first. While closing a
    # failure changes nothing.
    (S.CONNECTED, E.SESSION_LOST): S.RECONNECTING,
    (S.RECONNECTING, E.SESSION_LOST): S.RECONNECTING,
    (S.PAUSED, E.SESSION_LOST): S.RECONNECTING,
    (S.HELD_CONNECTED, E.SESSION_LOST): S.RECONNECTING,
    (S.HELD_RECONNECTING, E.SESSION_LOST): S.RECONNECTING,
    (S.CLOSING, E.SESSION_LOST): S.CLOSING,
    # The background pause; PAUSED -> PAUSED after each keep-alive connect.
    (S.CONNECTED, E.PAUSE): S.PAUSED,
    (S.RECONNECTING, E.PAUSE): S.PAUSED,
    (S.PAUSED, E.PAUSE): S.PAUSED,
    (S.HELD_CONNECTED, E.PAUSE): S.PAUSED,
    (S.HELD_RECONNECTING, E.PAUSE): S.PAUSED,
    (S.PAUSED, E.RESUME): S.CONNECTED,
    # A transport's hold, and its end: back to where it started, unless something else moved
    # the session meanwhile (a failure, a background pause, close()), which then stands.
    **{(state, E.HOLD): held for state, held in _HELD.items()},
    **{(held, E.RELEASE): state for state, held in _HELD.items()},
    (S.CONNECTED, E.RELEASE): S.CONNECTED,
    (S.RECONNECTING, E.RELEASE): S.RECONNECTING,
    (S.PAUSED, E.RELEASE): S.PAUSED,
    (S.CLOSING, E.RELEASE): S.CLOSING,
    (S.CLOSED, E.RELEASE): S.CLOSED,
    **{(state, E.CLOSE): S.CLOSING for state in (*_OPEN_STATES, S.CLOSING)},
    # Teardown is idempotent: open() failing after a concurrent close() tears down again.
    **{(state, E.TEARDOWN): S.CLOSED for state in (*_OPEN_STATES, S.CLOSING, S.CLOSED)},
}

_PUBLIC = {
    S.IDLE: ClientState.IDLE,
    S.CONNECTING: ClientState.CONNECTING,
    S.CONNECTED: ClientState.CONNECTED,
    S.RECONNECTING: ClientState.RECONNECTING,
    S.PAUSED: ClientState.PAUSED,
    S.HELD_CONNECTING: ClientState.PAUSED,
    S.HELD_CONNECTED: ClientState.PAUSED,
    S.HELD_RECONNECTING: ClientState.PAUSED,
    S.CLOSING: ClientState.CLOSING,
    S.CLOSED: ClientState.CLOSED,
}
_PAUSED = frozenset({S.PAUSED, S.HELD_CONNECTING, S.HELD_CONNECTED, S.HELD_RECONNECTING})


class IllegalTransition(RuntimeError):
    """An event the table does not allow in the current state (a bug in the client)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"illegal session transition: {event.value} in state {state.value}")
        self.state = state
        self.event = event


class SessionState:
    """The current :class:`State`, moved only through :data:`TRANSITIONS`."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.IDLE

    def apply(self, event: Event) -> State:
        """Move to the state the table gives for ``event``; return the new state."""
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise IllegalTransition(self.state, event) from None
        return self.state

    @property
    def public(self) -> ClientState:
        return _PUBLIC[self.state]

    @property
    def closed(self) -> bool:
        """Not open: before :meth:`Client.open` and once torn down."""
        return self.state is State.IDLE or self.state is State.CLOSED

    @property
    def closing(self) -> bool:
        """close() has begun (or finished): nothing may reopen or end the session now."""
        return self.state is State.CLOSING or self.state is State.CLOSED

    @property
    def paused(self) -> bool:
        """Fetching is paused for room in the buffer (by the background task or a transport)."""
        return self.state in _PAUSED

    @property
    def connected(self) -> bool:
        """A connect kept the session (and no failure since), whether or not a transport
        holds a response meanwhile. The background pause does not count: it may start
        before the first connect of a new session."""
        return self.state is State.CONNECTED or self.state is State.HELD_CONNECTED

    @property
    def held(self) -> bool:
        """A transport holds a response for room in the buffer."""
        return self.state in _PAUSED and self.state is not State.PAUSED
