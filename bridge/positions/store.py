"""Blocking file I/O for replay positions: one JSON file per endpoint under the state
directory, replaced atomically (write new, fsync, rename, fsync the directory)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


__all__ = ["StoredPosition", "PositionStore", "PositionStoreError", "CorruptPositionFile"]

# Endpoint names are validated by the settings with this grammar; the store checks it again
# because the name becomes a file name.
_ENDPOINT_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_FILE_SUFFIX = ".positions.json"


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
