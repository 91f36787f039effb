"""Protocol rules against hostile servers: clamped advice, paced instant replies, re-handshake
backoff, nesting depth, and which channels a subscription covers."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bridge.cometd.ext.ack import AckExtension
from bridge.cometd.protocol import (
    MAX_ADVICE,
    MAX_DEPTH,
    Action,
    Advice,
    Backoff,
    Reconnect,
    channel_matches,
    decide_connect,
    decide_transport_error,
    instant_reply_spacing,
    too_deep,
    validate_payload,
)


def nested(levels: int) -> dict[str, object]:
    """A message whose ``data`` nests ``levels`` objects (built without recursion)."""
    inner: object = 1
    for _ in range(levels):
        inner = {"a": inner}
    return {"channel": "/deep", "data": inner}


@pytest.mark.parametrize("value", [1e15, float("inf"), 10**400, 600_001])
def test_huge_interval_and_timeout_are_clamped_and_flagged(value: object) -> None:
    advice = Advice().merge({"interval": value, "timeout": value})
    assert advice.interval == MAX_ADVICE
    assert advice.timeout == MAX_ADVICE
    assert advice.clamped
    # The flag is per merge: a later reply within bounds clears it.
    assert not advice.merge({"interval": 5}).clamped


def test_instant_reply_spacing_bounds_the_request_rate() -> None:
    # Request times of a client whose every reply comes back at once and empty.
    times = [0.0]
    for streak in itertools.count(1):
        times.append(times[-1] + instant_reply_spacing(streak))
        if times[-1] > 5.0:
            break
    first_second = [t for t in times if t < 1.0]
    assert len(first_second) <= 15
    for start in (1.0, 2.0, 3.0, 3.95):
        assert len([t for t in times if start <= t < start + 1.0]) <= 10
    assert instant_reply_spacing(0) == 0.0


def _decide(reply: dict[str, object], advice: Advice, **kw: object) -> object:
    base: dict[str, object] = {
        "attempt": 0,
        "rnd": lambda: 0.5,
        "now": 100.0,
        "unconnected_since": None,
        "has_auth": False,
    }
    base.update(kw)
    return decide_connect(reply, advice, **base)  # type: ignore[arg-type]


def test_server_advised_rehandshakes_back_off_until_a_session_works() -> None:
    advice = Advice(reconnect=Reconnect.HANDSHAKE, interval=0.0)
    ok = {"channel": "/meta/connect", "successful": True}
    delays = [_decide(ok, advice, rehandshakes=n).delay for n in range(8)]  # type: ignore[attr-defined]
    assert delays[0] == 0.0  # the first one goes out at the server's interval
    assert all(d > 0 for d in delays[1:])
    assert delays == sorted(delays)
    assert delays[-1] >= Backoff().base * 2**5


def test_unknown_session_after_a_network_failure_rehandshakes_at_once() -> None:
    # attempt=1: a dropped socket was retried just before; the server then says the session
    # is gone and advises interval 0. No escalation carries over.
    unknown = {"channel": "/meta/connect", "successful": False, "error": "402::Unknown client"}
    decision = _decide(unknown, Advice(interval=0.0), attempt=1)
    assert decision.action is Action.HANDSHAKE  # type: ignore[attr-defined]
    assert decision.delay == 0.0  # type: ignore[attr-defined]
    # Sessions that keep dying right after their handshake do back off.
    again = _decide(unknown, Advice(interval=0.0), attempt=1, rehandshakes=3)
    assert again.delay > 0  # type: ignore[attr-defined]


def test_a_message_nested_too_deep_is_skipped_alone() -> None:
    deep = nested(1000)
    assert too_deep(deep)
    assert not too_deep(nested(MAX_DEPTH - 2))
    good = {"channel": "/ok", "data": {"n": 1}}
    messages, skipped = validate_payload([good, deep, {"channel": "/ok", "data": {"n": 2}}])
    assert [m["data"]["n"] for m in messages] == [1, 2]
    assert [reason for reason, _ in skipped] == ["too_deep"]
    assert "/deep" in skipped[0][1]


def test_a_deep_list_item_is_described_without_recursion() -> None:
    item: object = []
    for _ in range(5000):
        item = [item]
    messages, skipped = validate_payload([item])
    assert messages == []
    assert skipped[0][0] == "too_deep"


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("/a/b", "/a/b", True),
        ("/a/b", "/a/c", False),
        ("/a/*", "/a/b", True),
        ("/a/*", "/a/b/c", False),
        ("/a/*", "/a", False),
        ("/a/**", "/a/b/c", True),
        ("/a/**", "/ab/c", False),
        ("/**", "/x/y", True),
        ("/*", "/x", True),
        ("/*", "/x/y", False),
    ],
)
def test_channel_matches_bayeux_wildcards(pattern: str, channel: str, expected: bool) -> None:
    assert channel_matches(pattern, channel) is expected


def test_ack_extension_survives_an_unserialisable_message() -> None:
    ack = AckExtension()
    handshake = [{"channel": "/meta/handshake", "successful": True, "ext": {"ack": True}}]
    asyncio.run(ack.incoming(handshake))
    circular: dict[str, object] = {"n": 1}
    circular["self"] = circular
    payload = [
        {"channel": "/meta/connect", "successful": True, "ext": {"ack": 1}},
        {"channel": "/x", "data": circular},
        {"channel": "/x", "data": {"n": 2}},
    ]
    asyncio.run(ack.incoming(payload))
    assert [m.get("channel") for m in payload] == ["/meta/connect", "/x", "/x"]
    assert ack.outstanding == 2
    assert ack.holds_ack()


def test_first_retry_after_a_dropped_connection_is_immediate_then_backs_off() -> None:
    def delay(reason: str, attempt: int) -> float:
        return decide_transport_error(
            reason,
            Advice(),
            attempt=attempt,
            rnd=lambda: 0.5,
            now=100.0,
            unconnected_since=100.0,
            handshaking=False,
        ).delay

    assert delay("network", 0) == 0.0
    assert delay("network", 1) > 0
    # A server answering with garbage or errors is not retried in a hot loop.
    assert delay("malformed", 0) > 0
    assert delay("http_error", 0) > 0
