"""Failover accounting for the HA bench: for each SIGKILL of the active replica, how long until
the first message of the new owner reached the consumer and how many it sent twice; over the
whole stream, what is missing.

Sans-I/O: the consumer feeds one ``(seq, epoch, arrival time)`` per delivery, where ``epoch``
is the message's ``cometd-lease-epoch`` header (each new owner of an endpoint increments it),
and the runner notes each kill with the epoch the killed replica held.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


__all__ = ["EpochLog", "Takeover"]


@dataclass(frozen=True)
class Takeover:
    """One kill of the active replica and what followed it."""

    killed_at: float  # unix seconds, when SIGKILL was sent
    old_epoch: int  # the killed owner's epoch
    new_epoch: int | None  # the next owner's epoch (None: no message of a newer epoch arrived)
    first_at: float | None  # arrival of the new owner's first message, unix seconds
    duplicates: int  # messages of the new owner whose seq an earlier delivery already carried

    @property
    def seconds(self) -> float | None:
        """Kill → first message of the new owner at the consumer."""
        return None if self.first_at is None else self.first_at - self.killed_at


@dataclass
class EpochLog:
    """Every delivery of one endpoint's stream (seq from 1), by lease epoch."""

    _seen: set[int] = field(default_factory=set)
    _first_at: dict[int, float] = field(default_factory=dict)  # epoch → first arrival
    _duplicates: Counter[int] = field(default_factory=Counter)  # epoch → repeated seqs
    _delivered: Counter[int] = field(default_factory=Counter)  # epoch → deliveries
    _fresh: Counter[int] = field(default_factory=Counter)  # epoch → first deliveries of a seq
    _kills: list[tuple[float, int]] = field(default_factory=list)
    received: int = 0

    def add(self, seq: int, epoch: int, at: float) -> None:
        """Record one delivery of ``seq`` published under ``epoch``, received at ``at``."""
        self.received += 1
        self._first_at.setdefault(epoch, at)
        self._delivered[epoch] += 1
        if seq in self._seen:
            self._duplicates[epoch] += 1
        else:
            self._seen.add(seq)
            self._fresh[epoch] += 1

    def kill(self, at: float, epoch: int) -> None:
        """The owner of ``epoch`` was killed at ``at``."""
        self._kills.append((at, epoch))

    @property
    def latest_epoch(self) -> int | None:
        return max(self._first_at, default=None)

    def delivered(self, epoch: int) -> int:
        """How many messages published under ``epoch`` arrived (duplicates included)."""
        return self._delivered[epoch]

    def fresh(self, epoch: int) -> int:
        """How many seqs ``epoch`` delivered first (what it streamed beyond its replay)."""
        return self._fresh[epoch]

    def first_after(self, epoch: int) -> tuple[int, float] | None:
        """The lowest epoch above ``epoch`` that delivered anything, and its first arrival."""
        newer = [e for e in self._first_at if e > epoch]
        if not newer:
            return None
        e = min(newer)
        return e, self._first_at[e]

    def takeovers(self) -> list[Takeover]:
        out = []
        for at, epoch in self._kills:
            after = self.first_after(epoch)
            new_epoch, first_at = after if after is not None else (None, None)
            dups = self._duplicates[new_epoch] if new_epoch is not None else 0
            out.append(Takeover(at, epoch, new_epoch, first_at, dups))
        return out

    @property
    def distinct(self) -> int:
        return len(self._seen)

    @property
    def duplicates(self) -> int:
        return self.received - len(self._seen)

    def missing(self, total: int) -> list[int]:
        """The seqs of 1..``total`` that never arrived."""
        return [s for s in range(1, total + 1) if s not in self._seen]
