"""``cometd-bridge positions`` through the real entry point (bridge.cli.main)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.positions import (
    CorruptPositionFile,
    PositionStore,
    StoredPosition,
    cli as positions_cli,
)
from bridge.positions.lock import StateDirLock


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PositionStore:
    monkeypatch.setenv("BRIDGE_STATE_DIR", str(tmp_path))
    return PositionStore(tmp_path)


def test_set_then_show(state: PositionStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["positions", "set", "sf", "/event/Order__e", "1234"]) == 0
    assert state.load("sf")["/event/Order__e"].replay_id == 1234
    capsys.readouterr()
    assert main(["positions", "show", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["endpoint"], r["channel"], r["replay_id"]) for r in rows] == [
        ("sf", "/event/Order__e", 1234)
    ]
    assert rows[0]["age_seconds"] >= 0


def test_show_table(state: PositionStore) -> None:
    state.save("sf", {"/event/A": StoredPosition(7, 1000.0, "2024-01-01T00:00:00Z")})
    state.save("other", {"/b": StoredPosition(3, 1000.0)})
    out = io.StringIO()
    positions_cli.show(state, out, now=1000.0 + 3 * 3600)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "ENDPOINT",
        "CHANNEL",
        "REPLAY_ID",
        "UPDATED_AT",
        "AGE",
        "EVENT_TIME",
    ]
    assert lines[1].split() == ["other", "/b", "3", "1970-01-01T00:16:40+00:00", "3.0h", "-"]
    assert lines[2].split()[:3] == ["sf", "/event/A", "7"]
    out = io.StringIO()
    positions_cli.show(state, out, endpoint="sf", now=1000.0)
    assert "other" not in out.getvalue()


def test_show_empty(state: PositionStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["positions", "show"]) == 0
    assert "no stored positions" in capsys.readouterr().out


def test_clear(state: PositionStore, capsys: pytest.CaptureFixture[str]) -> None:
    state.save("sf", {"/a": StoredPosition(1, 1.0), "/b": StoredPosition(2, 1.0)})
    assert main(["positions", "clear", "sf", "/a"]) == 0
    assert set(state.load("sf")) == {"/b"}
    assert main(["positions", "clear", "sf", "/a"]) == 1
    assert "no stored position" in capsys.readouterr().err


def test_state_dir_option_wins(tmp_path: Path, state: PositionStore) -> None:
    other = tmp_path / "elsewhere"
    assert main(["positions", "--state-dir", str(other), "set", "sf", "/a", "-2"]) == 0
    assert PositionStore(other).load("sf")["/a"].replay_id == -2
    assert state.load("sf") == {}


def test_show_reports_a_corrupt_file_and_changes_nothing(
    state: PositionStore, capsys: pytest.CaptureFixture[str]
) -> None:
    state.path("sf").write_text("{broken")
    before = sorted(p.name for p in state.state_dir.iterdir())
    assert main(["positions", "show"]) == 1
    err = capsys.readouterr().err
    assert "sf.positions.json is corrupt" in err
    assert sorted(p.name for p in state.state_dir.iterdir()) == before
    assert state.path("sf").read_text() == "{broken"
    assert state.corrupt_copies("sf") == []


def test_set_and_clear_refuse_while_a_bridge_holds_the_state_directory(
    state: PositionStore, capsys: pytest.CaptureFixture[str]
) -> None:
    state.save("sf", {"/a": StoredPosition(7, 1.0)})
    with StateDirLock(state.state_dir):  # what a running bridge holds
        assert main(["positions", "set", "sf", "/a", "9"]) == 1
        err = capsys.readouterr().err
        assert f"in use by process {os.getpid()}" in err
        assert "only while the bridge is stopped" in err
        assert main(["positions", "clear", "sf", "/a"]) == 1
        assert main(["positions", "show"]) == 0, "show only reads: allowed while it runs"
        assert "may be ahead" in capsys.readouterr().err
    assert state.load("sf")["/a"].replay_id == 7
    assert main(["positions", "set", "sf", "/a", "9"]) == 0
    assert state.load("sf")["/a"].replay_id == 9


@pytest.mark.parametrize("command", [["set", "sf", "/a", "5"], ["clear", "sf", "/a"]])
def test_set_or_clear_after_a_corrupt_file_is_the_decision_the_endpoint_waits_for(
    state: PositionStore, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    state.path("sf").write_text("{broken")
    with pytest.raises(CorruptPositionFile):
        state.load("sf")  # what the bridge's start does: set aside, refuse
    assert not state.exists("sf")
    assert main(["positions", *command]) == 0
    assert "set aside as corrupt" in capsys.readouterr().out
    assert state.exists("sf"), "a file now exists: the endpoint may start"
    assert len(state.corrupt_copies("sf")) == 1, "the corrupt copy is kept for inspection"


def test_set_then_clear_after_a_corrupt_file_leaves_an_empty_file(state: PositionStore) -> None:
    state.path("sf").write_text("{broken")
    assert main(["positions", "set", "sf", "/a", "5"]) == 0  # moves the corrupt file aside
    assert main(["positions", "clear", "sf", "/a"]) == 0
    assert state.exists("sf")
    assert state.load("sf") == {}


@pytest.mark.parametrize("value", ["abc", "-3", "1.5"])
def test_bad_replay_id_is_a_usage_error(state: PositionStore, value: str) -> None:
    with pytest.raises(SystemExit) as info:  # argparse exits before main's dispatch
        main(["positions", "set", "sf", "/a", value])
    assert info.value.code == 2
    assert state.load("sf") == {}


def test_bad_endpoint_name(state: PositionStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["positions", "set", "../x", "/a", "1"]) == 1
    assert "invalid endpoint name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("channel", "reason"),
    [
        ("event/X", "not a Bayeux channel"),
        ("/event/*", "not a wildcard"),
        ("/meta/connect", "/meta channels"),
    ],
)
def test_set_and_clear_refuse_what_is_not_a_concrete_channel(
    state: PositionStore, capsys: pytest.CaptureFixture[str], channel: str, reason: str
) -> None:
    for command in (["set", "orders", channel, "5"], ["clear", "orders", channel]):
        with pytest.raises(SystemExit) as info:
            main(["positions", *command])
        assert info.value.code == 2  # argparse's usage error
        assert reason in capsys.readouterr().err
    assert state.load("orders") == {}
