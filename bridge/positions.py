"""Durable replay positions: what the broker has, per endpoint and channel.

Three layers, each with one job:

- :class:`ContiguousWatermark` (pure, no I/O): the highest replay id such that every message
  received before it has been confirmed by the broker. It never moves past an unconfirmed
  message, so resuming from it can only repeat messages, never skip one.
- :class:`PositionStore` (blocking file I/O): one JSON file per endpoint under the state
  directory, replaced atomically (write new, fsync, rename, fsync the directory).
- :class:`PositionKeeper` (asyncio): one endpoint's watermarks plus the store; it flushes at
  most every ``flush_every`` confirmed messages or ``flush_interval`` seconds, and always on
  :meth:`PositionKeeper.close`.

Replay ids are opaque but increasing per channel (Salesforce promises "higher than the ID of
the previous event"); the watermark therefore only ever moves up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


__all__ = [
    "ContiguousWatermark",
    "StoredPosition",
    "PositionStore",
    "PositionKeeper",
    "PositionStoreError",
    "CorruptPositionFile",
]

# Endpoint names are validated by the settings with this grammar; the store checks it again
# because the name becomes a file name.
_ENDPOINT_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_FILE_SUFFIX = ".positions.json"


class ContiguousWatermark:
    """The confirmed prefix of one channel's message stream.

    Call :meth:`received` in arrival order and :meth:`confirmed` in any order (publisher
    confirms come back out of order). :attr:`position` is the highest replay id such that
    every message received before it is confirmed. Both calls are O(1) amortised: each
    received message enters the deque once and leaves it once.

    The same replay id can be received twice (a replay after a reconnect repeats what was
    still in flight). A confirm is about the *event*: once the broker holds one copy, every
    copy received so far is done, so one ``confirmed(id)`` settles all of them.
    """

    __slots__ = ("_open", "_order", "_position")

    def __init__(self, position: int | None = None) -> None:
        self._position = position
        # Arrival order; each entry is [replay_id, done]. A list, not a tuple, so a confirm can
        # flip ``done`` in place without searching the deque.
        self._order: deque[list[Any]] = deque()
        # replay id -> entries not yet confirmed (usually one).
        self._open: dict[int, list[list[Any]]] = {}

    @property
    def position(self) -> int | None:
        """The confirmed position, or None if nothing was ever confirmed (nor given)."""
        return self._position

    @property
    def pending(self) -> int:
        """Messages received but not yet behind the watermark (unconfirmed or queued behind one)."""
        return len(self._order)

    def received(self, replay_id: int) -> None:
        """Record a message in arrival order; it holds the watermark until confirmed."""
        entry: list[Any] = [replay_id, False]
        self._order.append(entry)
        self._open.setdefault(replay_id, []).append(entry)

    def confirmed(self, replay_id: int) -> bool:
        """Record the broker's confirm of ``replay_id``; returns whether :attr:`position` moved.

        A confirm for an id that is not pending (already settled, or never received) is ignored.
        """
        entries = self._open.pop(replay_id, None)
        if entries is None:
            return False
        for entry in entries:
            entry[1] = True
        return self._advance()

    def is_open(self, replay_id: int) -> bool:
        """Whether ``replay_id`` was received and is not confirmed yet."""
        return replay_id in self._open

    def _advance(self) -> bool:
        before = self._position
        order = self._order
        while order and order[0][1]:
            replay_id: int = order.popleft()[0]
            if self._position is None or replay_id > self._position:
                self._position = replay_id
        return self._position != before


@dataclass(frozen=True, slots=True)
class StoredPosition:
    """One channel's durable position.

    ``updated_at`` is the unix time the position last advanced (it ages while a channel is
    quiet, which is what matters against the server's retention window); ``event_time`` is the
    event's own timestamp as the server gave it (e.g. Salesforce ``createdDate``), kept for
    operators, or None.
    """

    replay_id: int
    updated_at: float
    event_time: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "updated_at": self.updated_at,
            "event_time": self.event_time,
        }

    @classmethod
    def from_json(cls, value: object) -> StoredPosition:
        """Parse one channel's entry; raises ValueError on any deviation from the format."""
        if not isinstance(value, dict):
            raise ValueError("entry is not an object")
        replay_id = value.get("replay_id")
        updated_at = value.get("updated_at")
        event_time = value.get("event_time")
        # bool is an int subclass; a stored ``true`` is corruption, not replay id 1.
        if not isinstance(replay_id, int) or isinstance(replay_id, bool):
            raise ValueError(f"replay_id {replay_id!r} is not an integer")
        if not isinstance(updated_at, int | float) or isinstance(updated_at, bool):
            raise ValueError(f"updated_at {updated_at!r} is not a number")
        if not math.isfinite(updated_at):
            raise ValueError(f"updated_at {updated_at!r} is not finite")
        if event_time is not None and not isinstance(event_time, str):
            raise ValueError(f"event_time {event_time!r} is not a string")
        return cls(replay_id, float(updated_at), event_time)


class PositionStoreError(Exception):
    """Positions could not be read or written."""


class CorruptPositionFile(PositionStoreError):
    """A positions file exists but cannot be trusted.

    The bridge moves it aside to :attr:`aside` (``None`` when only read, as by ``positions
    show``) so an operator can inspect it; the bridge must not silently start from the
    configured start position instead (that would replay from -1 and lose the gap, or from -2
    and flood the broker).
    """

    def __init__(self, path: Path, aside: Path | None, reason: str) -> None:
        self.path = path
        self.aside = aside
        self.reason = reason
        where = f"moved it to {aside}. Inspect it, then restore it or" if aside else "To recover,"
        super().__init__(
            f"positions file {path} is corrupt ({reason}); {where} "
            f"set positions with `cometd-bridge positions set` (or `clear` to start from "
            f"replay_fallback) while the bridge is stopped."
        )


class PositionStore:
    """One JSON file per endpoint: ``{channel: {"replay_id", "updated_at", "event_time"}}``.

    Writes are atomic and durable: a crash leaves either the old file or the new one, never a
    torn mix. All methods block (file I/O and fsync); call them from a thread in async code.
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)

    def path(self, endpoint: str) -> Path:
        """The file holding ``endpoint``'s positions."""
        if not _ENDPOINT_NAME.match(endpoint):
            raise ValueError(f"invalid endpoint name {endpoint!r}")
        return self.state_dir / f"{endpoint}{_FILE_SUFFIX}"

    def endpoints(self, *, with_corrupt_copies: bool = False) -> list[str]:
        """Endpoints that have a positions file (or, when asked, only a corrupt copy), sorted."""
        if not self.state_dir.is_dir():
            return []
        names = {p.name[: -len(_FILE_SUFFIX)] for p in self.state_dir.glob(f"*{_FILE_SUFFIX}")}
        if with_corrupt_copies:
            for p in self.state_dir.glob(f"*{_FILE_SUFFIX}.corrupt-*"):
                names.add(p.name.split(_FILE_SUFFIX, 1)[0])
        return sorted(n for n in names if _ENDPOINT_NAME.match(n))

    def exists(self, endpoint: str) -> bool:
        """Whether ``endpoint`` has a positions file (an empty one counts: an operator's
        ``positions clear`` after a corrupt file writes one on purpose)."""
        return self.path(endpoint).exists()

    def corrupt_copies(self, endpoint: str) -> list[Path]:
        """Files set aside as corrupt for ``endpoint``, oldest first."""
        path = self.path(endpoint)
        if not self.state_dir.is_dir():
            return []
        return sorted(path.parent.glob(f"{path.name}.corrupt-*"))

    def read(self, endpoint: str) -> dict[str, StoredPosition]:
        """Read ``endpoint``'s positions without changing any file; {} if it has none yet.

        Raises :class:`CorruptPositionFile` (``aside`` None) when the file cannot be trusted.
        """
        path = self.path(endpoint)
        raw = self._read_bytes(path)
        if raw is None:
            return {}
        try:
            return _parse(raw)
        except ValueError as exc:
            raise CorruptPositionFile(path, None, str(exc)) from exc

    def load(self, endpoint: str) -> dict[str, StoredPosition]:
        """Read ``endpoint``'s positions; {} if it has none yet.

        Raises :class:`CorruptPositionFile` (after moving the file aside) when the file is not
        valid JSON of the expected shape, :class:`PositionStoreError` when it cannot be read
        or moved aside.
        """
        path = self.path(endpoint)
        raw = self._read_bytes(path)
        if raw is None:
            return {}
        try:
            return _parse(raw)
        except ValueError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
            try:
                os.replace(path, aside)
                _fsync_dir(path.parent)
            except OSError as move_error:
                raise PositionStoreError(
                    f"positions file {path} is corrupt ({exc}) and could not be moved aside: "
                    f"{move_error}"
                ) from move_error
            raise CorruptPositionFile(path, aside, str(exc)) from exc

    @staticmethod
    def _read_bytes(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a directory in its place, no permission, I/O error
            raise PositionStoreError(f"cannot read positions file {path}: {exc}") from exc

    def save(self, endpoint: str, positions: Mapping[str, StoredPosition]) -> None:
        """Replace ``endpoint``'s positions with ``positions``, atomically and durably."""
        path = self.path(endpoint)
        body = json.dumps(
            {channel: pos.to_json() for channel, pos in sorted(positions.items())},
            indent=2,
            sort_keys=True,
        ).encode()
        tmp: Path | None = None
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            # A name no other writer (a second thread, the CLI, another process) can share.
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.state_dir)
            tmp = Path(name)
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            tmp = None
            # The rename is durable only once the directory entry is on disk.
            _fsync_dir(self.state_dir)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise PositionStoreError(f"cannot write positions file {path}: {exc}") from exc

    def update(self, endpoint: str, channel: str, position: StoredPosition | None) -> None:
        """Set (or with None, remove) one channel's position, keeping the others."""
        positions = self.load(endpoint)
        if position is None:
            positions.pop(channel, None)
        else:
            positions[channel] = position
        self.save(endpoint, positions)


def _parse(raw: bytes) -> dict[str, StoredPosition]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    except RecursionError:  # nested past the parser's recursion limit
        raise ValueError("not JSON of the expected shape: nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("top level is not an object")
    result: dict[str, StoredPosition] = {}
    for channel, entry in doc.items():
        try:
            result[channel] = StoredPosition.from_json(entry)
        except ValueError as exc:
            raise ValueError(f"channel {channel!r}: {exc}") from exc
    return result


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        self._closed = False
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
        self._closed = True
        await self.flush()


def _matches(pattern: str, channel: str) -> bool:
    """Bayeux wildcards: ``/a/*`` matches one more segment, ``/a/**`` any number (>= 1)."""
    if pattern.endswith("/**"):
        return channel.startswith(pattern[:-2]) and len(channel) > len(pattern) - 2
    if pattern.endswith("/*"):
        rest = channel[len(pattern) - 1 :]
        return channel.startswith(pattern[:-1]) and bool(rest) and "/" not in rest
    return False
