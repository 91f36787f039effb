"""PositionKeeper: flush every N confirms or T seconds, always on close."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from bridge.positions import PositionKeeper, PositionStore, StoredPosition


class RecordingStore(PositionStore):
    """A real store that also tells the test loop each time a save completed."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.saves: asyncio.Queue[dict[str, StoredPosition]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def save(self, endpoint: str, positions: Mapping[str, StoredPosition]) -> None:
        super().save(endpoint, positions)
        self._loop.call_soon_threadsafe(self.saves.put_nowait, dict(positions))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_resumes_from_stored_position(tmp_path: Path) -> None:
    store = PositionStore(tmp_path)
    store.save("sf", {"/a": StoredPosition(41, 1.0)})
    keeper = PositionKeeper(store, "sf")
    assert keeper.load() == {"/a": StoredPosition(41, 1.0)}
    assert keeper.position("/a") == 41
    assert keeper.position("/b") is None
    keeper.received("/a", 42)
    keeper.received("/a", 43)
    assert not keeper.confirmed("/a", 43)
    assert keeper.position("/a") == 41
    assert keeper.pending("/a") == 2
    assert keeper.confirmed("/a", 42, "2024-01-01T00:00:00Z")
    assert keeper.position("/a") == 43
    assert keeper.pending("/a") == 0


async def test_close_always_flushes(tmp_path: Path) -> None:
    keeper = PositionKeeper(PositionStore(tmp_path), "sf", flush_every=1000, flush_interval=3600)
    keeper.load()
    keeper.received("/a", 5)
    keeper.confirmed("/a", 5, "t5")
    assert keeper.unflushed
    await keeper.close()
    assert not keeper.unflushed
    stored = PositionStore(tmp_path).load("sf")
    assert stored["/a"].replay_id == 5
    assert stored["/a"].event_time == "t5"


async def test_flushes_after_every_n_confirms(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    # An interval far away: only the count can trigger this flush.
    keeper = PositionKeeper(store, "sf", flush_every=3, flush_interval=3600)
    keeper.load()
    task = asyncio.create_task(keeper.run())
    try:
        for replay_id in (1, 2, 3):
            keeper.received("/a", replay_id)
        keeper.confirmed("/a", 1)
        keeper.confirmed("/a", 2)
        assert store.saves.empty()
        keeper.confirmed("/a", 3)
        saved = await asyncio.wait_for(store.saves.get(), 10)
        assert saved["/a"].replay_id == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_flushes_after_the_interval(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    keeper = PositionKeeper(store, "sf", flush_every=1000, flush_interval=0.05)
    keeper.load()
    task = asyncio.create_task(keeper.run())
    try:
        keeper.received("/a", 9)
        keeper.confirmed("/a", 9)
        saved = await asyncio.wait_for(store.saves.get(), 10)
        assert saved["/a"].replay_id == 9
        # Nothing changed since: a later confirm of nothing new does not write again.
        assert not keeper.confirmed("/a", 9)
        keeper.received("/a", 10)
        keeper.confirmed("/a", 10)
        saved = await asyncio.wait_for(store.saves.get(), 10)
        assert saved["/a"].replay_id == 10
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_flush_without_change_does_not_write(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    keeper = PositionKeeper(store, "sf")
    keeper.load()
    await keeper.flush()
    await keeper.close()
    assert store.saves.empty()
    assert not store.path("sf").exists()


async def test_ages_and_reset(tmp_path: Path) -> None:
    clock = FakeClock()
    store = PositionStore(tmp_path)
    store.save("sf", {"/a": StoredPosition(3, 900.0)})
    keeper = PositionKeeper(store, "sf", clock=clock)
    keeper.load()
    assert keeper.ages() == {"/a": 100.0}
    keeper.received("/a", 4)
    keeper.confirmed("/a", 4)
    clock.now = 1010.0
    assert keeper.ages() == {"/a": 10.0}
    # Gap policy: forget the position, the next subscribe uses the configured start.
    keeper.reset("/a", None)
    assert keeper.position("/a") is None
    assert keeper.ages() == {}
    await keeper.close()
    assert store.load("sf") == {}


@pytest.mark.parametrize(("every", "interval"), [(0, 1.0), (1, 0.0)])
def test_rejects_nonsense_limits(tmp_path: Path, every: int, interval: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        PositionKeeper(PositionStore(tmp_path), "sf", flush_every=every, flush_interval=interval)


async def test_a_failed_flush_is_retried_on_the_timer_without_a_new_confirm(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state directory should be")
    store = RecordingStore(blocker / "state")
    keeper = PositionKeeper(store, "sf", flush_every=1, flush_interval=0.05)
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    task = asyncio.create_task(keeper.run(on_error=errors.put_nowait))
    try:
        keeper.received("/a", 5)
        keeper.confirmed("/a", 5)
        async with asyncio.timeout(10):
            await errors.get()  # the first flush failed
        blocker.unlink()  # the directory can be created now; no further confirm comes
        async with asyncio.timeout(10):
            saved = await store.saves.get()
    finally:
        task.cancel()
    assert saved["/a"].replay_id == 5
    assert store.load("sf")["/a"].replay_id == 5


async def test_positions_of_channels_not_subscribed_are_never_kept(tmp_path: Path) -> None:
    store = PositionStore(tmp_path)
    keeper = PositionKeeper(store, "sf", channels=["/event/Order__e", "/data/**", "/x/*"])
    keeper.load()
    for channel, rid in [
        ("/event/Order__e", 1),
        ("/event/Unsolicited__e", 2),
        ("/data/AccountChange", 3),
        ("/x/y", 4),
        ("/x/y/z", 5),
    ]:
        keeper.received(channel, rid)
        keeper.confirmed(channel, rid)
    keeper.reset("/event/Other__e", 9)
    await keeper.close()
    assert set(store.load("sf")) == {"/event/Order__e", "/data/AccountChange", "/x/y"}
    assert keeper.ignored == 3


async def test_flush_never_stores_past_an_unconfirmed_message(tmp_path: Path) -> None:
    """Received 1..5, confirmed all but 3: what reaches the file is 2, until 3 is confirmed."""
    keeper = PositionKeeper(PositionStore(tmp_path), "sf", flush_every=1, flush_interval=3600)
    keeper.load()
    for replay_id in range(1, 6):
        keeper.received("/a", replay_id)
    for replay_id in (1, 2, 4, 5):
        keeper.confirmed("/a", replay_id, f"t{replay_id}")
    await keeper.flush()
    on_disk = json.loads(await asyncio.to_thread((tmp_path / "sf.positions.json").read_text))
    assert on_disk["/a"]["replay_id"] == 2, on_disk
    assert on_disk["/a"]["event_time"] == "t2", on_disk
    assert keeper.pending("/a") == 3  # 3 unconfirmed, 4 and 5 waiting behind it

    keeper.confirmed("/a", 3, "t3")
    await keeper.close()
    assert PositionStore(tmp_path).load("sf")["/a"].replay_id == 5


async def test_a_watermark_jump_keeps_the_event_time_of_its_new_position(
    tmp_path: Path,
) -> None:
    keeper = PositionKeeper(PositionStore(tmp_path), "sf", flush_every=1, flush_interval=3600)
    keeper.load()
    for replay_id in range(1, 6):
        keeper.received("/a", replay_id)
    for replay_id in (1, 2, 4, 5, 3):
        keeper.confirmed("/a", replay_id, f"t{replay_id}")
    await keeper.close()
    stored = PositionStore(tmp_path).load("sf")["/a"]
    assert (stored.replay_id, stored.event_time) == (5, "t5")
