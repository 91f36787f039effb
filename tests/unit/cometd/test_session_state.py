"""The client's session state: every allowed transition, and an illegal one raises."""

from __future__ import annotations

import pytest

from bridge.cometd.session_state import (
    TRANSITIONS,
    ClientState,
    Event,
    IllegalTransition,
    SessionState,
    State,
)


def at(state: State) -> SessionState:
    session = SessionState()
    session.state = state
    return session


@pytest.mark.parametrize(
    ("start", "event", "end"), [(s, e, t) for (s, e), t in TRANSITIONS.items()]
)
def test_every_allowed_transition(start: State, event: Event, end: State) -> None:
    session = at(start)
    assert session.apply(event) is end
    assert session.state is end


ILLEGAL = [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(("start", "event"), ILLEGAL)
def test_every_other_transition_raises(start: State, event: Event) -> None:
    session = at(start)
    with pytest.raises(IllegalTransition, match=f"{event.value} in state {start.value}"):
        session.apply(event)
    assert session.state is start  # an illegal event changes nothing


def test_some_transitions_are_illegal() -> None:
    assert (State.IDLE, Event.CONNECT_OK) in ILLEGAL
    assert (State.CLOSED, Event.CLOSE) in ILLEGAL
    assert (State.IDLE, Event.TEARDOWN) in ILLEGAL
    assert (State.CONNECTING, Event.SESSION_LOST) in ILLEGAL


def test_a_life() -> None:
    session = SessionState()
    assert session.closed
    assert not session.closing
    for event, public in [
        (Event.OPEN, ClientState.CONNECTING),
        (Event.CONNECT_OK, ClientState.CONNECTED),
        (Event.PAUSE, ClientState.PAUSED),
        (Event.CONNECT_OK, ClientState.PAUSED),  # a keep-alive keeps the pause
        (Event.RESUME, ClientState.CONNECTED),
        (Event.SESSION_LOST, ClientState.RECONNECTING),
        (Event.HOLD, ClientState.PAUSED),
        (Event.RELEASE, ClientState.RECONNECTING),  # a hold ends where it began
        (Event.CONNECT_OK, ClientState.CONNECTED),
        (Event.CLOSE, ClientState.CLOSING),
        (Event.CONNECT_OK, ClientState.CLOSING),  # nothing reopens a closing session
        (Event.TEARDOWN, ClientState.CLOSED),
        (Event.OPEN, ClientState.CONNECTING),
    ]:
        session.apply(event)
        assert session.public is public, event


@pytest.mark.parametrize("state", list(State))
def test_derived_views(state: State) -> None:
    session = at(state)
    assert session.closed is (state in (State.IDLE, State.CLOSED))
    assert session.closing is (state in (State.CLOSING, State.CLOSED))
    assert session.paused is (session.public is ClientState.PAUSED)
    assert session.held is (session.paused and state is not State.PAUSED)


def test_a_connect_reply_ahead_of_a_held_frame_connects_the_held_session() -> None:
    session = at(State.RECONNECTING)
    session.apply(Event.HOLD)
    assert not session.connected
    session.apply(Event.CONNECT_OK)
    assert session.connected
    assert session.public is ClientState.PAUSED
    assert session.apply(Event.RELEASE) is State.CONNECTED


def test_a_hold_from_the_first_connect_still_ends_in_a_connected_event() -> None:
    session = at(State.CONNECTING)
    session.apply(Event.HOLD)
    assert session.apply(Event.RELEASE) is State.CONNECTING
