"""Server-side Bayeux rules of the demo server, without sockets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, strategies as st

from bridge.demo import protocol as bp
from bridge.demo.events import ACCOUNT_CHANNEL, ORDER_CHANNEL, EventFactory


segment = st.text(alphabet="abcXYZ019_-.", min_size=1, max_size=6)
channel = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("/a", True),
        ("/a/b/*", True),
        ("/a/**", True),
        ("/**", True),
        ("a/b", False),
        ("/a//b", False),
        ("/a/*/b", False),
        ("/a/b*", False),
        ("/", False),
        ("", False),
    ],
)
def test_channel_grammar(name: str, valid: bool) -> None:
    assert bp.is_valid_channel(name) is valid


@given(channel)
def test_concrete_channels_match_themselves_and_double_star_of_their_parent(name: str) -> None:
    assert bp.is_valid_channel(name)
    assert bp.matches(name, name)
    assert bp.matches("/**", name)
    parent = name.rsplit("/", 1)[0]
    if parent:
        assert bp.matches(parent + "/*", name)
        assert bp.matches(parent + "/**", name)
        assert not bp.matches(name + "/*", parent)


@given(channel, segment, segment)
def test_single_star_matches_one_segment_only(base: str, one: str, two: str) -> None:
    assert bp.matches(base + "/*", f"{base}/{one}")
    assert not bp.matches(base + "/*", f"{base}/{one}/{two}")
    assert bp.matches(base + "/**", f"{base}/{one}/{two}")
    assert not bp.matches(base + "/*", base)


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"3", b'"x"', b"\xff"])
def test_decode_batch_rejects_what_is_not_a_message_array(body: bytes) -> None:
    with pytest.raises(bp.BadRequestError):
        bp.decode_batch(body)


def test_decode_batch_accepts_a_single_object() -> None:
    assert bp.decode_batch(b'{"channel": "/a"}') == [{"channel": "/a"}]


@pytest.mark.parametrize(
    "item",
    [
        1,
        None,
        [],
        {},
        {"channel": 3},
        {"channel": "x"},
        {"channel": "/a", "id": []},
        {"channel": "/a", "clientId": 5},
    ],
)
def test_check_message_rejects_malformed_items(item: object) -> None:
    assert bp.check_message(item) is None
    reply = bp.invalid_item_reply(item)
    assert reply["successful"] is False
    assert reply["error"] == "400::invalid_message"


def test_subscription_list() -> None:
    assert bp.subscription_list("/a") == ["/a"]
    assert bp.subscription_list(["/a", "/b"]) == ["/a", "/b"]
    assert bp.subscription_list([]) is None
    assert bp.subscription_list(["/a", 1]) is None
    assert bp.subscription_list(None) is None


def test_events_are_deterministic_and_replay_ids_increase_per_channel() -> None:
    fixed = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    one = EventFactory(seed=5, clock=lambda: fixed)
    two = EventFactory(seed=5, clock=lambda: fixed)
    orders = [one.next(ORDER_CHANNEL) for _ in range(5)]
    assert orders == [two.next(ORDER_CHANNEL) for _ in range(5)]
    ids = [o["event"]["replayId"] for o in orders]
    assert ids == sorted(set(ids))
    account = one.next(ACCOUNT_CHANNEL)
    assert account["event"]["replayId"] not in ids
    assert account["event"]["createdDate"] == "2025-01-02T03:04:05.678Z"
    assert account["payload"]["ChangeEventHeader"]["commitTimestamp"] == int(
        fixed.timestamp() * 1000
    )
    with pytest.raises(ValueError, match="no demo events"):
        one.next("/event/Other__e")
