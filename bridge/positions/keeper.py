"""One endpoint's watermarks plus its store (asyncio): flushes at most every ``flush_every``
confirmed messages or ``flush_interval`` seconds, and always on :meth:`PositionKeeper.close`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection

from bridge.positions.store import PositionStore, PositionStoreError, StoredPosition
from bridge.positions.watermark import ContiguousWatermark


__all__ = ["PositionKeeper"]


class PositionKeeper:
    """One endpoint's watermarks, flushed to a :class:`PositionStore`.

    The endpoint worker calls :meth:`received` for each message with a replay id (in arrival
    order) and :meth:`confirmed` when the broker confirmed it. :meth:`position` is what a
    (re)subscription must replay from: the in-memory confirmed watermark, which is at or ahead
    of the flushed one. Flushes happen in :meth:`run` (start it as a task) when
    ``flush_every`` confirmed messages accumulated or ``flush_interval`` seconds passed since
    the last flush with something to write, and always in :meth:`close`.
    """

    def __init__(
        self,
        store: PositionStore,
        endpoint: str,
        *,
        flush_every: int = 1000,
        flush_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        channels: Collection[str] | None = None,
    ) -> None:
        """``channels``: the subscribed channels (Bayeux wildcards allowed); positions of any
        other channel are never kept (None: no restriction)."""
        if flush_every < 1:
            raise ValueError("flush_every must be >= 1")
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        self.store = store
        self.endpoint = endpoint
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self._clock = clock
        self._marks: dict[str, ContiguousWatermark] = {}
        # The latest confirmed position per channel (what the next flush writes).
        self._current: dict[str, StoredPosition] = {}
        # Event times of confirmed messages the watermark has not passed yet, per channel.
        self._event_times: dict[str, dict[int, str | None]] = {}
        # What the file holds (after load / the last flush).
        self._flushed: dict[str, StoredPosition] = {}
        self._since_flush = 0
        self._dirty = asyncio.Event()
        self._due = asyncio.Event()
        self._lock = asyncio.Lock()
        self._channels = None if channels is None else frozenset(channels)
        # Messages of channels the session never subscribed to (a misbehaving server): never
        # a position, never a file entry, never a metric label.
        self.ignored = 0

    def load(self) -> dict[str, StoredPosition]:
        """Read the stored positions (blocking; call once before subscribing).

        Raises :class:`CorruptPositionFile` rather than starting from scratch.
        """
        stored = self.store.load(self.endpoint)
        self._flushed = dict(stored)
        self._current = dict(stored)
        self._marks = {ch: ContiguousWatermark(p.replay_id) for ch, p in stored.items()}
        return dict(stored)

    def position(self, channel: str) -> int | None:
        """The confirmed replay id to resume ``channel`` from, or None if there is none."""
        mark = self._marks.get(channel)
        return None if mark is None else mark.position

    def pending(self, channel: str) -> int:
        """Messages of ``channel`` received but not yet behind its watermark."""
        mark = self._marks.get(channel)
        return 0 if mark is None else mark.pending

    def subscribed(self, channel: str) -> bool:
        """Whether ``channel`` is one of the endpoint's subscriptions (or matches one)."""
        allowed = self._channels
        return allowed is None or channel in allowed or any(_matches(p, channel) for p in allowed)

    def received(self, channel: str, replay_id: int) -> None:
        """Record a message with a replay id, in arrival order (ignored, and counted in
        :attr:`ignored`, for a channel the endpoint did not subscribe to)."""
        if not self.subscribed(channel):
            self.ignored += 1
            return
        mark = self._marks.get(channel)
        if mark is None:
            mark = self._marks[channel] = ContiguousWatermark()
        mark.received(replay_id)

    def confirmed(self, channel: str, replay_id: int, event_time: str | None = None) -> bool:
        """Record the broker's confirm; returns whether the channel's position advanced."""
        mark = self._marks.get(channel)
        if mark is None or not mark.is_open(replay_id):
            return False
        # Confirms come back out of order: the event time stored with a position must be
        # that of the event AT the position, not of the confirm that let the watermark jump.
        times = self._event_times.setdefault(channel, {})
        times[replay_id] = event_time
        if not mark.confirmed(replay_id):
            return False
        position = mark.position
        assert position is not None  # it just advanced
        position_time = times.get(position)
        for passed in [rid for rid in times if rid <= position]:
            del times[passed]
        self._current[channel] = StoredPosition(position, self._clock(), position_time)
        self._since_flush += 1
        self._dirty.set()
        if self._since_flush >= self.flush_every:
            self._due.set()
        return True

    def reset(self, channel: str, replay_id: int | None) -> None:
        """Forget ``channel``'s watermark and pending messages; start it at ``replay_id``.

        For the gap policy (None: the next subscribe uses the configured start) and operator
        resets. Written at the next flush. Ignored for a channel not subscribed to.
        """
        if not self.subscribed(channel):
            self.ignored += 1
            return
        self._marks[channel] = ContiguousWatermark(replay_id)
        self._event_times.pop(channel, None)
        if replay_id is None:
            self._current.pop(channel, None)
        else:
            self._current[channel] = StoredPosition(replay_id, self._clock())
        self._dirty.set()
        self._due.set()

    def ages(self, now: float | None = None) -> dict[str, float]:
        """Seconds since each channel's confirmed position last advanced (for
        ``replay_position_age_seconds``); an alert compares it with the server's retention."""
        t = self._clock() if now is None else now
        return {ch: max(0.0, t - p.updated_at) for ch, p in self._current.items()}

    def snapshot(self) -> dict[str, StoredPosition]:
        """The current confirmed positions (possibly not flushed yet), for /status."""
        return dict(self._current)

    @property
    def unflushed(self) -> bool:
        """Whether a confirmed position exists that the file does not hold yet."""
        return self._current != self._flushed

    async def flush(self) -> None:
        """Write the current positions if they changed since the last flush."""
        async with self._lock:
            self._dirty.clear()
            self._due.clear()
            self._since_flush = 0
            if self._current == self._flushed:
                return
            snapshot = dict(self._current)
            # fsync can take milliseconds; keep it off the event loop.
            await asyncio.to_thread(self.store.save, self.endpoint, snapshot)
            self._flushed = snapshot

    async def run(self, on_error: Callable[[PositionStoreError], None] | None = None) -> None:
        """Flush loop; run it as a task for the endpoint's lifetime and cancel it on stop.

        A failed flush is reported to ``on_error`` and retried every ``flush_interval`` (not
        only after the next confirm: the last positions of a quiet stream must reach the file
        too). Without ``on_error`` the failure is raised.
        """
        loop = asyncio.get_running_loop()
        last_flush = loop.time()
        while True:
            await self._dirty.wait()
            remaining = last_flush + self.flush_interval - loop.time()
            if remaining > 0:
                # Wake early when flush_every confirms piled up, else at the interval.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._due.wait(), remaining)
            try:
                await self.flush()
            except PositionStoreError as exc:
                self._dirty.set()  # still to write: the next round retries
                if on_error is None:
                    raise
                on_error(exc)
            last_flush = loop.time()

    async def close(self) -> None:
        """Final flush (the caller cancels :meth:`run` first or after; both are safe)."""
        await self.flush()


def _matches(pattern: str, channel: str) -> bool:
    """Bayeux wildcards: ``/a/*`` matches one more segment, ``/a/**`` any number (>= 1)."""
    if pattern.endswith("/**"):
        return channel.startswith(pattern[:-2]) and len(channel) > len(pattern) - 2
    if pattern.endswith("/*"):
        rest = channel[len(pattern) - 1 :]
        return channel.startswith(pattern[:-1]) and bool(rest) and "/" not in rest
    return False
