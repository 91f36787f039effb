"""Decision table (what to do after each reply or failure) and backoff."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from bridge.cometd.protocol import (
    Action,
    Advice,
    Backoff,
    Decision,
    Reconnect,
    decide_connect,
    decide_handshake,
    decide_transport_error,
)


ADVICE = Advice(Reconnect.RETRY, interval=0.0, timeout=30.0, max_interval=10.0)


def _half() -> float:
    return 0.5


def connect(reply: dict[str, object], advice: Advice = ADVICE, **kw: object) -> Decision:
    params: dict[str, object] = {
        "attempt": 0,
        "rnd": _half,
        "now": 100.0,
        "unconnected_since": None,
        "has_auth": False,
    }
    params.update(kw)
    return decide_connect(reply, advice.merge(reply.get("advice")), **params)  # type: ignore[arg-type]


OK = {"channel": "/meta/connect", "successful": True}


def test_success_retry_polls_at_once_or_after_interval() -> None:
    assert connect(OK) == Decision(Action.CONNECT)
    assert connect({**OK, "advice": {"interval": 1500}}) == Decision(Action.CONNECT, 1.5)


def test_success_with_handshake_advice_rehandshakes() -> None:
    decision = connect({**OK, "advice": {"reconnect": "handshake", "interval": 250}})
    assert decision == Decision(Action.HANDSHAKE, 0.25, "server_advice")


def test_success_with_none_is_a_server_close() -> None:
    # aiocometd D5 ignored reconnect:none on successful replies.
    assert connect({**OK, "advice": {"reconnect": "none"}}).action is Action.CLOSE


@pytest.mark.parametrize(
    "error", ["402::session_unknown", "401:abc:Unknown client", "403::Unknown client"]
)
@pytest.mark.parametrize("has_auth", [False, True])
def test_unknown_session_rehandshakes_without_authenticate(error: str, has_auth: bool) -> None:
    reply = {"channel": "/meta/connect", "successful": False, "error": error}
    for advice in ({}, {"reconnect": "handshake", "interval": 0}, {"reconnect": "retry"}):
        decision = connect({**reply, "advice": advice}, has_auth=has_auth)
        assert decision == Decision(Action.HANDSHAKE, 0.0, "unknown_session")


def test_auth_failure_authenticates_then_fresh_handshake_even_with_none() -> None:
    reply = {
        "channel": "/meta/connect",
        "successful": False,
        "error": "401::Authentication invalid",
        "advice": {"reconnect": "none"},
    }
    decision = connect(reply, has_auth=True)
    assert (decision.action, decision.reason, decision.authenticate) == (
        Action.HANDSHAKE,
        "auth",
        True,
    )
    # Without an auth extension there is nothing to renew: follow reconnect:none.
    assert connect(reply, has_auth=False).action is Action.CLOSE


def test_quota_waits_long() -> None:
    reply = {
        "channel": "/meta/connect",
        "successful": False,
        "error": "403::Organization concurrent user limit exceeded",
        "advice": {"reconnect": "none"},
    }
    decision = connect(reply, has_auth=True)
    assert decision.reason == "quota"
    assert decision.authenticate is False
    assert decision.delay >= Backoff().quota / 2


def test_failure_without_advice_backs_off_then_escalates_to_handshake() -> None:
    reply = {"channel": "/meta/connect", "successful": False, "error": "500::boom"}
    first = connect(reply, attempt=0, unconnected_since=100.0)
    assert first.action is Action.CONNECT
    assert first.delay > 0  # never a hot loop
    # After timeout + interval + maxInterval (40 s) unconnected, go straight to a handshake.
    late = connect(reply, attempt=5, now=141.0, unconnected_since=100.0)
    assert late == Decision(Action.HANDSHAKE, late.delay, "max_interval")


def test_failure_with_none_closes() -> None:
    reply = {
        "channel": "/meta/connect",
        "successful": False,
        "error": "403::denied",
        "advice": {"reconnect": "none"},
    }
    assert connect(reply).action is Action.CLOSE


def test_failure_with_handshake_advice() -> None:
    reply = {
        "channel": "/meta/connect",
        "successful": False,
        "advice": {"reconnect": "handshake", "interval": 100},
    }
    assert connect(reply) == Decision(Action.HANDSHAKE, 0.1, "server_advice")


def handshake(reply: dict[str, object], advice: Advice = ADVICE, **kw: object) -> Decision:
    params: dict[str, object] = {"attempt": 0, "rnd": _half, "has_auth": False}
    params.update(kw)
    return decide_handshake(reply, advice.merge(reply.get("advice")), **params)  # type: ignore[arg-type]


SF_DENIED = {
    "channel": "/meta/handshake",
    "successful": False,
    "error": "403::Handshake denied",
    "advice": {"reconnect": "none"},
}


def test_handshake_denied_for_auth_reason_authenticates() -> None:
    reply = {**SF_DENIED, "ext": {"sfdc": {"failureReason": "401::Authentication invalid"}}}
    decision = handshake(reply, has_auth=True)
    assert (decision.action, decision.authenticate) == (Action.HANDSHAKE, True)
    assert handshake(reply, has_auth=False).action is Action.CLOSE


def test_handshake_denied_plain_closes_and_other_failures_retry() -> None:
    assert handshake(SF_DENIED, has_auth=True).action is Action.CLOSE
    retry = handshake({"channel": "/meta/handshake", "successful": False}, attempt=3)
    assert retry.action is Action.HANDSHAKE
    assert retry.delay > 0


def test_transport_error_retries_connect_then_escalates() -> None:
    early = decide_transport_error(
        "network",
        ADVICE,
        attempt=0,
        rnd=_half,
        now=100.0,
        unconnected_since=100.0,
        handshaking=False,
    )
    assert (early.action, early.reason) == (Action.CONNECT, "network")
    late = decide_transport_error(
        "network",
        ADVICE,
        attempt=3,
        rnd=_half,
        now=200.0,
        unconnected_since=100.0,
        handshaking=False,
    )
    assert (late.action, late.reason) == (Action.HANDSHAKE, "max_interval")
    during_handshake = decide_transport_error(
        "timeout", ADVICE, attempt=0, rnd=_half, now=0.0, unconnected_since=0.0, handshaking=True
    )
    assert (during_handshake.action, during_handshake.reason) == (Action.HANDSHAKE, "timeout")


@given(attempt=st.integers(0, 10_000), r=st.floats(0.0, 1.0))
def test_backoff_is_bounded_and_never_zero(attempt: int, r: float) -> None:
    backoff = Backoff(base=0.1, cap=30.0)
    delay = backoff.delay(attempt, lambda: r)
    assert 0.05 <= delay <= 30.0


def test_backoff_grows_until_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=2.0)
    delays = [backoff.delay(n, lambda: 1.0) for n in range(8)]
    assert delays == sorted(delays)
    assert delays[0] == pytest.approx(0.1)
    assert delays[-1] == pytest.approx(2.0)


_reply = st.fixed_dictionaries(
    {"channel": st.just("/meta/connect"), "successful": st.booleans()},
    optional={
        "error": st.sampled_from(
            [
                "402::session_unknown",
                "401::Authentication invalid",
                "403::x limit exceeded",
                "403::Handshake denied",
                "500::x",
                "garbage",
            ]
        ),
        "advice": st.fixed_dictionaries(
            {},
            optional={
                "reconnect": st.sampled_from(["retry", "handshake", "none"]),
                "interval": st.integers(0, 5000),
            },
        ),
    },
)


@given(reply=_reply, attempt=st.integers(0, 50), has_auth=st.booleans(), r=st.floats(0, 1))
def test_decision_table_invariants(
    reply: dict[str, object], attempt: int, has_auth: bool, r: float
) -> None:
    decision = connect(reply, attempt=attempt, has_auth=has_auth, rnd=lambda: r)
    assert decision.delay >= 0
    if decision.authenticate:
        assert has_auth
        assert decision.action is Action.HANDSHAKE
    if reply["successful"] is False and decision.action is Action.CONNECT:
        assert decision.delay > 0  # a failed reply is never retried in a hot loop
    if decision.reason is not None:
        from bridge.cometd.events import RECONNECT_REASONS

        assert decision.reason in RECONNECT_REASONS
