"""ReplayExtension and the gap helpers, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.cometd.ext import (
    REPLAY_ALL,
    REPLAY_NEW,
    GapPolicy,
    InvalidReplayId,
    ReplayExtension,
    ReplayGapError,
    event_time_of,
    gap_record,
    gap_start,
    initial_start,
    invalid_replay_id,
    replay_id_of,
)


INVALID = (
    "400::The replayId {82} you provided was invalid. Please provide a valid ID, "
    "-2 to replay all events, or -1 to replay only new events."
)


def subscribe(channel: str | list[str]) -> dict[str, Any]:
    return {"channel": "/meta/subscribe", "clientId": "c1", "subscription": channel, "id": "3"}


async def test_handshake_asks_for_replay_and_reads_support() -> None:
    ext = ReplayExtension(lambda ch: None)
    handshake: dict[str, Any] = {"channel": "/meta/handshake", "ext": {"other": 1}}
    await ext.outgoing([handshake], {})
    assert handshake["ext"] == {"other": 1, "replay": True}
    assert ext.supported is None
    await ext.incoming(
        [
            {
                "channel": "/meta/handshake",
                "successful": True,
                "ext": {"replay": True, "payload.format": True},
            }
        ]
    )
    assert ext.supported is True
    await ext.incoming([{"channel": "/meta/handshake", "successful": True}])
    assert ext.supported is False


async def test_subscribe_id_is_computed_at_send_time() -> None:
    positions: dict[str, int] = {}
    ext = ReplayExtension(positions.get, start=REPLAY_ALL)
    first = subscribe("/event/A")
    await ext.outgoing([first], {})
    assert first["ext"] == {"replay": {"/event/A": REPLAY_ALL}}
    # The same (re)subscription later, after the position advanced: the new position is used.
    positions["/event/A"] = 1234
    again = subscribe("/event/A")
    await ext.outgoing([again], {})
    assert again["ext"] == {"replay": {"/event/A": 1234}}


async def test_batched_subscriptions_and_query_strings() -> None:
    ext = ReplayExtension({"/topic/T": 5}.get, start=REPLAY_NEW)
    ext.set_start("/event/B", REPLAY_ALL)
    payload = [
        subscribe(["/topic/T?Id=1", "/event/B"]),
        subscribe("/event/C"),
        {"channel": "/meta/connect", "clientId": "c1"},
    ]
    await ext.outgoing(payload, {})
    assert payload[0]["ext"]["replay"] == {"/topic/T": 5, "/event/B": REPLAY_ALL}
    assert payload[1]["ext"]["replay"] == {"/event/C": REPLAY_NEW}
    assert "ext" not in payload[2]


async def test_no_replay_map_when_the_server_said_no() -> None:
    ext = ReplayExtension(lambda ch: 7)
    await ext.incoming([{"channel": "/meta/handshake", "successful": True, "ext": {}}])
    message = subscribe("/event/A")
    await ext.outgoing([message], {})
    assert "ext" not in message


def test_invalid_replay_id_is_classified() -> None:
    reply = {
        "channel": "/meta/subscribe",
        "successful": False,
        "subscription": "/event/A",
        "error": INVALID,
    }
    gap = invalid_replay_id(reply)
    assert gap == InvalidReplayId("/event/A", 82, INVALID)
    legacy = dict(
        reply,
        error="400::The replayId for channel /event/A wasn't found using the provided map {}",
    )
    legacy_gap = invalid_replay_id(legacy)
    assert legacy_gap is not None
    assert legacy_gap.replay_id is None


@pytest.mark.parametrize(
    "reply",
    [
        None,
        {"successful": True, "error": INVALID},
        {"successful": False, "error": "403::subscribe_denied"},
        {"successful": False, "error": "400::channel_missing"},
        {"successful": False},
    ],
)
def test_other_failures_are_not_gaps(reply: dict[str, Any] | None) -> None:
    assert invalid_replay_id(reply) is None


def test_gap_policy() -> None:
    gap = InvalidReplayId("/event/A", 82, INVALID)
    assert gap_start("latest", "sf", gap) == REPLAY_NEW
    assert gap_start(GapPolicy.EARLIEST, "sf", gap) == REPLAY_ALL
    with pytest.raises(ReplayGapError, match=r"/event/A.*82"):
        gap_start("fail", "sf", gap)
    record = gap_record("sf", gap, "earliest", 1700000000.0)
    assert record == {
        "type": "replay_gap",
        "endpoint": "sf",
        "channel": "/event/A",
        "replay_id": 82,
        "error": INVALID,
        "policy": "earliest",
        "resumed_from": REPLAY_ALL,
        "time": 1700000000.0,
    }
    assert gap_record("sf", gap, "fail", 0.0)["resumed_from"] is None


@pytest.mark.parametrize(
    ("replay", "fallback", "expected"),
    [
        ("off", "new", None),
        ("new", "all", REPLAY_NEW),
        ("-1", "all", REPLAY_NEW),
        ("all", "new", REPLAY_ALL),
        ("-2", "new", REPLAY_ALL),
        ("stored", "new", REPLAY_NEW),
        ("stored", "all", REPLAY_ALL),
    ],
)
def test_initial_start(replay: str, fallback: str, expected: int | None) -> None:
    assert initial_start(replay, fallback) == expected


def test_initial_start_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="replay setting"):
        initial_start("sometimes")
    with pytest.raises(ValueError, match="replay_fallback"):
        initial_start("stored", "stored")


def test_reading_events() -> None:
    pe = {
        "channel": "/event/A",
        "data": {
            "payload": {"CreatedDate": "2024-05-01T10:00:00.000Z"},
            "event": {"replayId": 17, "EventUuid": "u"},
        },
    }
    assert replay_id_of(pe) == 17
    assert event_time_of(pe) == "2024-05-01T10:00:00.000Z"
    push_topic = {"data": {"event": {"replayId": 3, "createdDate": "2024-05-01T10:00:01Z"}}}
    assert event_time_of(push_topic) == "2024-05-01T10:00:01Z"
    cdc = {"data": {"payload": {"ChangeEventHeader": {"commitTimestamp": 1714557600000}}}}
    assert event_time_of(cdc) == "1714557600000"
    for message in ({}, {"data": "x"}, {"data": {"event": {"replayId": True}}}):
        assert replay_id_of(message) is None
        assert event_time_of(message) is None


async def test_every_handshake_resubscribes_from_the_confirmed_watermark() -> None:
    """Two handshakes with a PositionKeeper behind the extension (no sockets): the first
    subscription starts from the stored position, the one after the re-handshake from the
    contiguous confirmed watermark, never past an unconfirmed event nor from the start again."""
    import tempfile
    from pathlib import Path

    from bridge.positions import PositionKeeper, PositionStore, StoredPosition

    with tempfile.TemporaryDirectory() as tmp:
        store = PositionStore(Path(tmp))
        store.save("sf", {"/event/A": StoredPosition(41, 1.0)})
        keeper = PositionKeeper(store, "sf")
        keeper.load()
        ext = ReplayExtension(keeper.position, start=REPLAY_ALL)
        handshake_reply = {
            "channel": "/meta/handshake",
            "successful": True,
            "ext": {"replay": True},
        }

        await ext.incoming([dict(handshake_reply)])
        first = subscribe(["/event/A", "/event/B"])
        await ext.outgoing([first], {})
        assert first["ext"]["replay"] == {"/event/A": 41, "/event/B": REPLAY_ALL}

        for replay_id in (42, 43, 44, 45):
            keeper.received("/event/A", replay_id)
        keeper.received("/event/B", 7)
        for replay_id in (42, 43, 45):  # 44 is still unconfirmed
            keeper.confirmed("/event/A", replay_id)
        keeper.confirmed("/event/B", 7)

        await ext.incoming([dict(handshake_reply)])  # the session was lost: a new handshake
        again = subscribe(["/event/A", "/event/B"])
        await ext.outgoing([again], {})
        assert again["ext"]["replay"] == {"/event/A": 43, "/event/B": 7}
        await keeper.close()
