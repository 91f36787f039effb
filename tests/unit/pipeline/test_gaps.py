"""The daemon's gap policy, gap records and the replay setting, without sockets."""

from __future__ import annotations

import pytest

from bridge.cometd.ext import REPLAY_ALL, REPLAY_NEW, InvalidReplayId
from bridge.pipeline.gaps import GapPolicy, ReplayGapError, gap_record, gap_start, initial_start


INVALID = (
    "400::The replayId {82} you provided was invalid. Please provide a valid ID, "
    "-2 to replay all events, or -1 to replay only new events."
)


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
