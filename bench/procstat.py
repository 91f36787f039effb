"""CPU time and memory of another process, read from /proc (Linux), so each measured program
is charged only for what it used itself."""

from __future__ import annotations

import os


__all__ = ["cpu_seconds", "rss_mb", "peak_rss_mb", "find_pid"]

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (10 ms resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may contain spaces: fields are counted after its closing parenthesis.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _status_kb(pid: int, field: bytes) -> float:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(field):
                return float(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    """Resident memory now, MiB."""
    return _status_kb(pid, b"VmRSS:") / 1024


def peak_rss_mb(pid: int) -> float:
    """Highest resident memory so far (VmHWM), MiB."""
    return _status_kb(pid, b"VmHWM:") / 1024


def find_pid(comm: str) -> int | None:
    """The first process whose command name is ``comm`` (e.g. the broker's ``beam.smp``)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == comm:
                        return int(entry)
            except OSError:
                continue
    return None
