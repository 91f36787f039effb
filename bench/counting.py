"""Exact delivery accounting for one benchmark run: missing, duplicates, order, latency.

Sans-I/O: the consumer (or a receive-only variant) feeds it ``(key, seq, ts_ms)`` triples, where
``key`` names the stream (a routing key or channel) and ``seq`` counts from 1 within it, as the
test servers' ``/control/publish`` does. Sequence numbers are kept in a growable bitmap per key,
so a duplicate is recognised exactly at O(1) per message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field


__all__ = ["SeqCounter", "StreamReport", "percentile", "parse_seq_ts"]

# Bodies are {"seq":N,"ts":T,...} (the servers' JSON.stringify order, kept by every bridge that
# re-encodes a dict in order); matching that prefix is several times cheaper than a JSON parse.
_SEQ_TS = re.compile(rb'^\{"seq":(\d+),"ts":(\d+)')


def parse_seq_ts(body: bytes) -> tuple[int, int]:
    """``(seq, ts_ms)`` of a message body; a full JSON parse only when the fast path misses."""
    m = _SEQ_TS.match(body)
    if m is not None:
        return int(m.group(1)), int(m.group(2))
    import json  # the slow path: any key order, any whitespace

    data = json.loads(body)
    return int(data["seq"]), int(data["ts"])


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1, nearest rank) of ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[rank]


@dataclass
class _Stream:
    seen: bytearray = field(default_factory=bytearray)
    distinct: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    last: int = 0


@dataclass(frozen=True)
class StreamReport:
    """What one run delivered, against what was expected."""

    expected: int
    received: int
    distinct: int
    missing: int
    duplicates: int
    out_of_order: int
    unexpected: int
    latencies_ms: list[float]


class SeqCounter:
    """Counts every delivery per stream; ``complete`` once each expected seq arrived once."""

    def __init__(self, expected: dict[str, int] | None = None) -> None:
        """``expected``: stream key → how many messages (seq 1..n) it should deliver."""
        self.expected = dict(expected or {})
        self._streams: dict[str, _Stream] = {}
        self._target = sum(self.expected.values())
        self.distinct = 0
        self.received = 0
        self.unexpected = 0  # a key or seq outside what was expected
        self.latencies_ms: list[float] = []
        self.last_ms = 0.0  # when the last new (not duplicate) message arrived, unix ms

    @property
    def complete(self) -> bool:
        return self.distinct >= self._target

    def add(self, key: str, seq: int, ts_ms: int, now_ms: float) -> None:
        """Record one delivery of ``seq`` on ``key``, received at ``now_ms`` (unix ms)."""
        self.received += 1
        limit = self.expected.get(key)
        if limit is None or not 1 <= seq <= limit:
            self.unexpected += 1
            return
        s = self._streams.get(key)
        if s is None:
            s = self._streams[key] = _Stream(bytearray(limit + 1))
        if s.seen[seq]:
            s.duplicates += 1
            return
        s.seen[seq] = 1
        s.distinct += 1
        self.distinct += 1
        if seq < s.last:
            s.out_of_order += 1
        else:
            s.last = seq
        self.latencies_ms.append(now_ms - ts_ms)
        self.last_ms = now_ms

    def add_many(self, key: str, items: Iterable[tuple[int, int]], now_ms: float) -> None:
        for seq, ts in items:
            self.add(key, seq, ts, now_ms)

    def report(self) -> StreamReport:
        streams = self._streams.values()
        return StreamReport(
            expected=self._target,
            received=self.received,
            distinct=self.distinct,
            missing=self._target - self.distinct,
            duplicates=sum(s.duplicates for s in streams),
            out_of_order=sum(s.out_of_order for s in streams),
            unexpected=self.unexpected,
            latencies_ms=list(self.latencies_ms),
        )
