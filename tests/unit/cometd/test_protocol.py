"""Sans-I/O Bayeux core: errors, classification, advice, channels, payloads, builders."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from bridge.cometd.exceptions import ServerError
from bridge.cometd.protocol import (
    LIMIT_LABELS,
    MAX_ADVICE,
    Action,
    Advice,
    Backoff,
    FailureKind,
    MessageFactory,
    Reconnect,
    classify_failure,
    decide_connect,
    is_event,
    parse_error,
    refused_replay_id,
    split_replies,
    validate_channel,
    validate_payload,
)
from tests.unit.cometd.failure_cases import CASES, IDS, QUOTA, sfdc_denied


# -- error grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "args", "message"),
    [
        ("402::session_unknown", 402, (), "session_unknown"),
        ("401:abc123:Unknown client", 401, ("abc123",), "Unknown client"),
        ("403:xj3,/foo/bar:Subscription denied", 403, ("xj3", "/foo/bar"), "Subscription denied"),
        ("403::Handshake denied", 403, (), "Handshake denied"),
        ("400::a: message: with colons", 400, (), "a: message: with colons"),
        ("plain text", None, (), "plain text"),
        ("40x::nope", None, (), "40x::nope"),
    ],
)
def test_parse_error(error: str, code: int | None, args: tuple[str, ...], message: str) -> None:
    parsed = parse_error(error)
    assert parsed is not None
    assert (parsed.code, parsed.args, parsed.message) == (code, args, message)


def test_parse_error_ignores_non_strings() -> None:
    assert parse_error(None) is None
    assert parse_error(403) is None


_arg = st.text(alphabet=st.characters(blacklist_characters=":,"), min_size=1, max_size=8)


@given(
    code=st.integers(100, 999),
    args=st.lists(_arg, max_size=3),
    message=st.text(max_size=30),
)
def test_parse_error_round_trip(code: int, args: list[str], message: str) -> None:
    text = f"{code}:{','.join(args)}:{message}"
    parsed = parse_error(text)
    assert parsed is not None
    assert parsed == type(parsed)(code, tuple(args), message)
    error = ServerError("failed", {"error": text})
    assert (error.error_code, error.error_args, error.error_message) == (code, args, message)


@given(st.text(max_size=40))
def test_parse_error_never_raises(text: str) -> None:
    parsed = parse_error(text)
    assert parsed is not None
    assert ServerError("x", {"error": text}).error == text


def test_server_error_without_response() -> None:
    error = ServerError("Connection closed by the server", None)
    assert (error.error, error.error_code, error.error_args, error.error_message) == (
        None,
        None,
        None,
        None,
    )
    assert str(error) == "Connection closed by the server"


# -- classification --------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "kind", "limit"), CASES, ids=IDS)
def test_classify_failure(reply: dict[str, object], kind: FailureKind, limit: str | None) -> None:
    failure = classify_failure(reply)
    assert (failure.kind, failure.limit) == (kind, limit)


@pytest.mark.parametrize(("reply", "kind", "limit"), [c for c in CASES if c[1] is QUOTA])
def test_every_quota_backs_off_as_a_quota(
    reply: dict[str, object], kind: FailureKind, limit: str | None
) -> None:
    """A rate limit (``403::Too many requests``) waits as long as any exhausted quota."""
    decision = decide_connect(
        reply,
        Advice(),
        attempt=0,
        rnd=lambda: 0.0,
        now=0.0,
        unconnected_since=None,
        has_auth=True,
    )
    assert (decision.action, decision.reason) == (Action.HANDSHAKE, "quota")
    assert decision.delay >= Backoff().quota / 2


def test_failure_carries_code_reason_and_advice() -> None:
    failure = classify_failure(sfdc_denied("401::Authentication invalid"))
    assert failure.code == 401
    assert failure.reason == "401::Authentication invalid"
    assert failure.advice is Reconnect.NONE
    assert classify_failure({"error": "x", "advice": {"reconnect": ["bad"]}}).advice is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["error", "ext", "advice", "channel", "x"]), _json))
def test_classify_failure_total(reply: dict[str, object]) -> None:
    failure = classify_failure(reply)
    assert failure.kind in FailureKind
    assert failure.limit is None or failure.limit in LIMIT_LABELS


# -- advice ----------------------------------------------------------------------------------


def test_advice_converts_ms_and_merges_per_field() -> None:
    advice = Advice().merge({"reconnect": "retry", "interval": 2000, "timeout": 30000})
    assert advice == Advice(Reconnect.RETRY, interval=2.0, timeout=30.0, max_interval=10.0)
    # A later message carrying only reconnect keeps timeout and interval (aiocometd D3).
    advice = advice.merge({"reconnect": "handshake"})
    assert advice == Advice(Reconnect.HANDSHAKE, interval=2.0, timeout=30.0, max_interval=10.0)
    assert advice.merge({"maxInterval": 5000}).session_expiry == pytest.approx(37.0)


def test_advice_transport_sub_object_applies_to_that_transport_only() -> None:
    raw = {"timeout": 30000, "long-polling": {"timeout": 5000, "reconnect": "none"}}
    assert Advice().merge(raw, "long-polling").timeout == 5.0
    assert Advice().merge(raw, "long-polling").reconnect is Reconnect.NONE
    assert Advice().merge(raw, "websocket").timeout == 30.0


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "retry",
        {"timeout": "30000"},
        {"timeout": True},
        {"timeout": -1},
        {"timeout": float("nan")},
        {"reconnect": "sometimes"},
        {"multiple-clients": "yes"},
    ],
)
def test_advice_ignores_ill_typed_fields(raw: object) -> None:
    assert Advice().merge(raw) == Advice()


_advice_raw = st.fixed_dictionaries(
    {},
    optional={
        "reconnect": st.sampled_from(["retry", "handshake", "none", "bogus"]) | _json,
        "interval": st.integers(0, 10**7) | _json,
        "timeout": st.integers(0, 10**7) | st.floats(allow_nan=True) | _json,
        "maxInterval": st.integers(0, 10**7) | _json,
        "multiple-clients": st.booleans() | _json,
        "long-polling": _json,
    },
)


@given(st.lists(_advice_raw, max_size=5))
def test_advice_merge_is_field_wise_last_writer_wins(raws: list[dict[str, object]]) -> None:
    advice = Advice()
    for raw in raws:
        advice = advice.merge(raw)
    # Oracle: the last well-typed value of each field, else the default.
    expected_timeout = Advice().timeout
    for raw in raws:
        value = raw.get("timeout")
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and value == value and value >= 0:  # type: ignore[operator]
            expected_timeout = min(value / 1000, MAX_ADVICE)  # type: ignore[operator]
    assert advice.timeout == pytest.approx(expected_timeout)
    assert advice.interval <= MAX_ADVICE
    assert advice.interval >= 0
    assert advice.max_interval >= 0
    assert advice.reconnect in Reconnect


# -- events vs replies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "event"),
    [
        ({"channel": "/foo", "data": {"a": 1}}, True),
        ({"channel": "/foo", "data": {}, "id": "7"}, True),
        ({"channel": "/foo", "successful": True, "id": "7"}, False),
        ({"channel": "/foo", "successful": True, "data": "x"}, False),  # cometd#607
        ({"channel": "/meta/connect", "successful": True}, False),
        ({"channel": "/meta/disconnect", "successful": True}, False),
        ({"channel": "/meta/foo", "data": 1}, False),
        ({"channel": 5, "data": 1}, False),
        ({"channel": "/foo"}, False),
    ],
)
def test_is_event(message: dict[str, object], event: bool) -> None:
    assert is_event(message) is event


def test_split_replies_by_id_and_by_channel_without_id() -> None:
    sent: list[dict[str, object]] = [
        {"channel": "/meta/subscribe", "id": "1"},
        {"channel": "/chat", "id": "2", "data": 1},
        {"channel": "/meta/connect", "id": "3"},
    ]
    received: list[dict[str, object]] = [
        {"channel": "/chat", "data": {"n": 1}},
        {"channel": "/meta/subscribe", "successful": True, "id": "1"},
        {"channel": "/chat", "successful": True},  # id omitted (D9)
        {"channel": "/meta/connect", "successful": True, "id": "99"},  # stale
        {"channel": "/meta/disconnect", "successful": True},  # unsolicited
    ]
    replies, rest = split_replies(sent, received)
    assert replies == {
        "1": received[1],
        "2": received[2],
    }
    assert rest == [received[0], received[3], received[4]]


def test_split_replies_accepts_integer_ids() -> None:
    replies, rest = split_replies(
        [{"channel": "/x", "id": "4"}], [{"channel": "/x", "successful": True, "id": 4}]
    )
    assert list(replies) == ["4"]
    assert rest == []


# -- channels --------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["/foo", "/foo/bar", "/event/Order__e", "/a/b-c/d.e", "/x/1"])
def test_valid_channels(channel: str) -> None:
    assert validate_channel(channel) == channel
    assert validate_channel(channel, subscribe=True) == channel


@pytest.mark.parametrize("channel", ["/foo/*", "/foo/**", "/*", "/**"])
def test_wildcards_only_for_subscribe(channel: str) -> None:
    assert validate_channel(channel, subscribe=True) == channel
    with pytest.raises(ValueError, match="wildcard"):
        validate_channel(channel)


@pytest.mark.parametrize(
    "channel",
    [
        "",
        "foo",
        "/",
        "/foo/",
        "//foo",
        "/foo/*/bar",
        "/foo/a*",
        "/fo o",
        "/meta/connect",
        "/meta",
        "/meta/**",
        42,
        None,
    ],
)
def test_invalid_channels(channel: object) -> None:
    with pytest.raises(ValueError, match="channel"):
        validate_channel(channel, subscribe=True)


# -- payload shape ---------------------------------------------------------------------------


def test_validate_payload_skips_what_is_not_bayeux() -> None:
    good = {"channel": "/a", "data": 1}
    messages, skipped = validate_payload([good, 1, {"data": 2}, {"channel": 3}, None])
    assert messages == [good]
    assert [reason for reason, _ in skipped] == ["not_bayeux"] * 4


def test_validate_payload_accepts_single_object_and_rejects_scalars() -> None:
    assert validate_payload({"channel": "/a"}) == ([{"channel": "/a"}], [])
    messages, skipped = validate_payload("hello")
    assert messages == []
    assert skipped[0][0] == "not_bayeux"


@given(_json)
def test_validate_payload_total(obj: object) -> None:
    messages, skipped = validate_payload(obj)
    assert all(isinstance(m.get("channel"), str) for m in messages)
    if isinstance(obj, list):
        assert len(messages) + len(skipped) == len(obj)
    json.dumps(messages)


# -- builders --------------------------------------------------------------------------------


def test_ids_never_restart_and_first_connect_has_timeout_zero() -> None:
    factory = MessageFactory()
    handshake = factory.handshake(["websocket", "long-polling"], advice_timeout=60.0)
    assert handshake["supportedConnectionTypes"] == ["websocket", "long-polling"]
    assert handshake["advice"] == {"timeout": 60000, "interval": 0}
    factory.client_id = "c1"
    first = factory.connect("long-polling", first=True)
    later = factory.connect("long-polling", first=False)
    assert first["advice"] == {"timeout": 0}
    assert "advice" not in later
    assert first["clientId"] == "c1"
    factory.client_id = "c2"  # a re-handshake does not restart the counter (D13)
    ids = [
        handshake["id"],
        first["id"],
        later["id"],
        factory.subscribe("/a")["id"],
        factory.publish("/a", 1)["id"],
        factory.unsubscribe("/a")["id"],
        factory.disconnect()["id"],
    ]
    assert ids == [str(n) for n in range(1, 8)]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("400::The replayId {82} you provided was invalid. Please provide a valid ID", (True, 82)),
        ("400::The replayId for channel /event/A wasn't found using the map {}", (True, None)),
        ("400::Invalid connection type", (False, None)),
        ("403::Too many requests", (False, None)),
    ],
)
def test_refused_replay_id(error: str, expected: tuple[bool, int | None]) -> None:
    assert refused_replay_id(error) == expected
