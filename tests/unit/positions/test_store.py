"""PositionStore: atomic JSON files, tolerant of absence, loud on corruption."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from bridge.positions import (
    CorruptPositionFile,
    PositionStore,
    PositionStoreError,
    StoredPosition,
)


def test_missing_file_is_empty(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "not-yet")
    assert store.load("sf") == {}
    assert store.endpoints() == []


def test_round_trip_and_format(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "state")
    positions = {
        "/event/Order__e": StoredPosition(42, 1700000000.5, "2024-01-01T00:00:00.000Z"),
        "/topic/Acc": StoredPosition(7, 1700000001.0),
    }
    store.save("sf", positions)
    assert store.load("sf") == positions
    doc = json.loads(store.path("sf").read_text())
    assert doc["/event/Order__e"] == {
        "replay_id": 42,
        "updated_at": 1700000000.5,
        "event_time": "2024-01-01T00:00:00.000Z",
    }
    assert store.endpoints() == ["sf"]
    # No temporary file is left next to it.
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["sf.positions.json"]


def test_save_replaces_atomically(tmp_path: Path) -> None:
    store = PositionStore(tmp_path)
    store.save("sf", {"/a": StoredPosition(1, 1.0)})
    inode_before = store.path("sf").stat().st_ino
    store.save("sf", {"/a": StoredPosition(2, 2.0)})
    # A new file was renamed over the old one (never rewritten in place).
    assert store.path("sf").stat().st_ino != inode_before
    assert store.load("sf") == {"/a": StoredPosition(2, 2.0)}


def test_update_keeps_other_channels_and_removes(tmp_path: Path) -> None:
    store = PositionStore(tmp_path)
    store.save("sf", {"/a": StoredPosition(1, 1.0), "/b": StoredPosition(2, 2.0)})
    store.update("sf", "/a", StoredPosition(10, 3.0))
    assert store.load("sf") == {"/a": StoredPosition(10, 3.0), "/b": StoredPosition(2, 2.0)}
    store.update("sf", "/b", None)
    assert store.load("sf") == {"/a": StoredPosition(10, 3.0)}


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"[]",
        b'{"/a": 5}',
        b'{"/a": {"replay_id": "5", "updated_at": 1}}',
        b'{"/a": {"replay_id": true, "updated_at": 1}}',
        b'{"/a": {"replay_id": 5}}',
        b'{"/a": {"replay_id": 5, "updated_at": 1, "event_time": 3}}',
        b"\xff\xfe",
    ],
)
def test_corrupt_file_is_moved_aside_and_raises(tmp_path: Path, content: bytes) -> None:
    store = PositionStore(tmp_path)
    store.path("sf").write_bytes(content)
    with pytest.raises(CorruptPositionFile) as info:
        store.load("sf")
    err = info.value
    assert err.path == store.path("sf")
    assert not err.path.exists()
    assert err.aside.read_bytes() == content
    assert str(err.aside) in str(err)
    # The next load sees no file: the operator decides, the error was loud once.
    assert store.load("sf") == {}


@pytest.mark.parametrize("name", ["", "Upper", "../x", "a/b", "1abc"])
def test_endpoint_name_must_be_safe(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid endpoint name"):
        PositionStore(tmp_path).path(name)


def test_unwritable_state_dir_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PositionStoreError, match="cannot write"):
        PositionStore(blocker / "state").save("sf", {"/a": StoredPosition(1, 1.0)})


def test_a_file_nested_past_the_recursion_limit_is_corrupt(tmp_path: Path) -> None:
    store = PositionStore(tmp_path)
    store.path("sf").write_text('{"/a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CorruptPositionFile, match="nested too deeply"):
        store.load("sf")


def test_a_corrupt_file_that_cannot_be_moved_aside_is_a_store_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = PositionStore(state)
    store.path("sf").write_text("{broken")
    # Root ignores permissions: an immutable directory is what a read-only one is to others.
    if subprocess.run(["chattr", "+i", str(state)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(PositionStoreError, match=r"corrupt .* could not be moved aside"):
            store.load("sf")
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)
    assert store.path("sf").read_text() == "{broken"


def test_concurrent_saves_never_share_a_temporary_file(tmp_path: Path) -> None:
    store = PositionStore(tmp_path)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(200):
                store.save("sf", {"/a": StoredPosition(n * 1000 + i, 1.0)})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.load("sf")["/a"].replay_id % 1000 == 199
    assert [p.name for p in tmp_path.iterdir()] == ["sf.positions.json"], "no temp file left"
