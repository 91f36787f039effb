"""``<state dir>/.lock``: one writer of the state directory at a time.

The running bridge holds an exclusive ``fcntl.flock`` on it for its whole life; the
``positions`` CLI takes it before changing a file. Without it two bridges on one state
directory, or ``positions set`` while the bridge runs, overwrite each other's positions (the
bridge rewrites the file from memory at its next flush). The kernel drops the lock when the
holder exits, however it exits (SIGKILL included), so a stale lock cannot block a restart.
The holder's pid is written into the file for the refusal message only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType


__all__ = ["LOCK_NAME", "StateDirLock", "StateDirLocked", "held_by"]

LOCK_NAME = ".lock"


class StateDirLocked(Exception):
    """Another process holds the state directory's lock."""

    def __init__(self, path: Path, holder: int | None) -> None:
        self.path = path
        self.holder = holder
        who = f"process {holder}" if holder else "another process"
        super().__init__(
            f"the state directory {path.parent} is in use by {who} (a running cometd-bridge "
            f"holds {path}); stop it first"
        )


class StateDirLock:
    """An exclusive, non-blocking ``flock`` on ``<state_dir>/.lock``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (creating the directory if needed); raises :class:`StateDirLocked`
        when another process holds it, ``OSError`` when the directory is unusable."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StateDirLocked(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # the pid is for messages only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.release()


def held_by(state_dir: str | os.PathLike[str]) -> int | None:
    """The pid holding ``state_dir``'s lock, 0 if held by an unknown process, None if free
    (or there is no lock file). Takes nothing: a shared probe released at once."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd) or 0
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return None


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
