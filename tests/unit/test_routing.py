"""Routing: the AMQP message contract (body, headers, message_id, routing key)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, strategies as st

from bridge.routing import (
    CONTENT_TYPE,
    DELIVERY_MODE_PERSISTENT,
    Router,
    RoutingError,
    dotted_channel,
)
from bridge.settings import load_settings


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
segments = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=8)
channels = st.lists(segments, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


def sf_event(replay_id: Any, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "channel": "/event/Order__e",
        "data": {"schema": "s1", "payload": payload or {"n": 1}, "event": {"replayId": replay_id}},
    }


def test_contract_for_a_salesforce_event() -> None:
    routed = Router("sf", "cometd").route(sf_event(42) | {"id": "7"}, received_at=1700000000.5)
    assert routed.exchange == "cometd"
    assert routed.routing_key == "event.Order__e"
    assert json.loads(routed.body) == sf_event(42)["data"]
    assert routed.headers == {
        "cometd-endpoint": "sf",
        "cometd-channel": "/event/Order__e",
        "cometd-id": "7",
        "replay-id": 42,
    }
    assert routed.message_id == "sf:/event/Order__e:r42"
    assert routed.timestamp == 1700000000.5
    assert routed.channel == "/event/Order__e"
    assert routed.replay_id == 42
    assert (CONTENT_TYPE, DELIVERY_MODE_PERSISTENT) == ("application/json", 2)


def test_body_is_compact_utf8_json() -> None:
    routed = Router("e", "x").route({"channel": "/a", "data": {"k": "é", "l": [1, 2]}})
    assert routed.body == '{"k":"é","l":[1,2]}'.encode()


def test_message_id_falls_back_to_cometd_id_then_hash() -> None:
    router = Router("e", "x")
    assert router.route({"channel": "/a", "id": 9, "data": {}}).message_id == "e:/a:i9"
    routed = router.route({"channel": "/a", "data": {"b": 1, "a": 2}})
    digest = hashlib.sha256(b'{"a":2,"b":1}').hexdigest()[:32]
    assert routed.message_id == f"e:/a:h{digest}"
    assert "cometd-id" not in routed.headers
    assert "replay-id" not in routed.headers
    assert routed.replay_id is None


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{channel}", "event.Order__e"),
        ("{endpoint}.{channel}", "sf.event.Order__e"),
        ("{channel_path}", "/event/Order__e"),
        ("fixed", "fixed"),
        ("{{x}}.{channel}", "{x}.event.Order__e"),
    ],
)
def test_routing_key_templates(template: str, expected: str) -> None:
    assert Router("sf", "x", template).route(sf_event(1)).routing_key == expected


def test_router_from_settings() -> None:
    env = {
        "BRIDGE_ENDPOINTS__SF__URL": "https://h/cometd",
        "BRIDGE_ENDPOINTS__SF__CHANNELS": "/event/*",
        "BRIDGE_ENDPOINTS__SF__EXCHANGE": "sf.events",
        "BRIDGE_ENDPOINTS__SF__ROUTING_KEY": "{endpoint}.{channel}",
    }
    ep = load_settings(env, secrets_dir=None).endpoints["sf"]
    routed = Router.from_settings("sf", ep).route(sf_event(3))
    assert (routed.exchange, routed.routing_key) == ("sf.events", "sf.event.Order__e")


def test_routing_key_is_cached_per_channel() -> None:
    router = Router("e", "x")
    first = router.routing_key("/a/b")
    assert router.routing_key("/a/b") is first
    assert router.routing_key("/a/c") == "a.c"


@pytest.mark.parametrize(
    "message",
    [{"data": {}}, {"channel": "/a"}, {"channel": 5, "data": {}}, {"channel": "/a", "data": {1j}}],
)
def test_non_data_messages_raise(message: dict[str, Any]) -> None:
    with pytest.raises(RoutingError):
        Router("e", "x").route(message)


def test_boolean_replay_id_is_not_a_replay_id() -> None:
    routed = Router("e", "x").route({"channel": "/a", "data": {"event": {"replayId": True}}})
    assert routed.replay_id is None
    assert ":h" in routed.message_id


@given(channel=channels)
def test_dotted_channel(channel: str) -> None:
    dotted = dotted_channel(channel)
    assert "/" not in dotted
    assert "/" + dotted.replace(".", "/") == channel


@given(data=json_values, channel=channels, cometd_id=st.none() | st.text(min_size=1, max_size=5))
def test_message_id_is_stable_and_body_round_trips(
    data: Any, channel: str, cometd_id: str | None
) -> None:
    message: dict[str, Any] = {"channel": channel, "data": data}
    if cometd_id is not None:
        message["id"] = cometd_id
    a = Router("ep", "x").route(message)
    # Same event again, with its keys in another order: same id.
    reordered = json.loads(json.dumps(data, sort_keys=True))
    b = Router("ep", "x").route(dict(reversed(list((message | {"data": reordered}).items()))))
    assert a.message_id == b.message_id
    assert a.message_id.startswith(f"ep:{channel}:")
    assert json.loads(a.body) == data
    assert a.headers["cometd-endpoint"] == "ep"
    assert a.headers["cometd-channel"] == channel
    assert ("cometd-id" in a.headers) == (cometd_id is not None)


@given(ids=st.lists(st.integers(min_value=1), min_size=2, max_size=20, unique=True))
def test_distinct_replay_ids_give_distinct_message_ids(ids: list[int]) -> None:
    router = Router("sf", "x")
    routed = [router.route(sf_event(i, {"same": True})) for i in ids]
    assert len({r.message_id for r in routed}) == len(ids)
    assert [r.headers["replay-id"] for r in routed] == ids


def test_a_message_id_over_255_bytes_is_shortened_to_a_stable_hash() -> None:
    router = Router("e", "x")
    long_id = "é" * 200  # 400 UTF-8 bytes: a server id far over AMQP's short-string limit
    first = router.route({"channel": "/a", "id": long_id, "data": {}}).message_id
    again = router.route({"channel": "/a", "id": long_id, "data": {"other": 1}}).message_id
    other = router.route({"channel": "/a", "id": long_id + "x", "data": {}}).message_id
    full = f"e:/a:i{long_id}".encode()
    assert len(first.encode()) <= 255
    assert first == again, "the same event keeps the same id"
    assert first != other
    assert first.endswith("~" + hashlib.sha256(full).hexdigest())
    assert first.startswith("e:/a:ié")
    short = router.route({"channel": "/a", "id": "x" * 100, "data": {}}).message_id
    assert short == "e:/a:i" + "x" * 100, "ids that fit are unchanged"


def test_a_data_value_nested_beyond_the_recursion_limit_is_a_routing_error() -> None:
    data: Any = 1
    for _ in range(5000):
        data = [data]
    with pytest.raises(RoutingError, match="not JSON-serialisable"):
        Router("e", "x").route({"channel": "/a", "data": data})
