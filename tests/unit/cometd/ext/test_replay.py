"""ReplayExtension, the invalid-replay-id refusal and the event fields, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.cometd.ext import (
    REPLAY_ALL,
    REPLAY_NEW,
    InvalidReplayId,
    ReplayExtension,
    event_time_of,
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


async def test_settle_hook_runs_once_per_payload_before_the_ids_are_read() -> None:
    # The consumer's confirms land while the hook is awaited: the ids sent are the ones after
    # it, and a payload of several subscribes (a resubscription) waits once.
    positions: dict[str, int] = {"/event/A": 10, "/event/B": 20}
    settles = 0

    async def settle() -> None:
        nonlocal settles
        settles += 1
        positions["/event/A"] = 15
        positions["/event/B"] = 25

    ext = ReplayExtension(positions.get, start=REPLAY_NEW, settle=settle)
    handshake: dict[str, Any] = {"channel": "/meta/handshake"}
    await ext.outgoing([handshake], {})
    assert settles == 0, "only a subscribe waits"
    first, second = subscribe("/event/A"), subscribe("/event/B")
    await ext.outgoing([first, second], {})
    assert settles == 1
    assert first["ext"] == {"replay": {"/event/A": 15}}
    assert second["ext"] == {"replay": {"/event/B": 25}}


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
