"""The delivery accounting the benchmark's verdicts rest on: exact missing/duplicates/order."""

from __future__ import annotations

import pytest

from bench.counting import SeqCounter, parse_seq_ts, percentile


def test_complete_only_when_every_seq_arrived_once() -> None:
    c = SeqCounter({"a": 3, "b": 2})
    for key, seq in [("a", 1), ("b", 1), ("a", 2), ("b", 2)]:
        c.add(key, seq, 100, 105.0)
        assert not c.complete
    c.add("a", 3, 100, 107.0)
    assert c.complete
    r = c.report()
    assert (r.missing, r.duplicates, r.out_of_order, r.unexpected) == (0, 0, 0, 0)
    assert r.latencies_ms == [5.0, 5.0, 5.0, 5.0, 7.0]


def test_duplicates_missing_order_and_strays_are_counted_exactly() -> None:
    c = SeqCounter({"a": 5})
    for seq in [1, 3, 2, 3, 1]:
        c.add("a", seq, 0, 0.0)
    c.add("a", 6, 0, 0.0)  # beyond what was published
    c.add("other", 1, 0, 0.0)  # a stream nobody expected
    r = c.report()
    assert r.distinct == 3
    assert r.missing == 2
    assert r.duplicates == 2
    assert r.out_of_order == 1  # 2 after 3; duplicates are not also counted as disorder
    assert r.unexpected == 2
    assert r.received == 7
    assert not c.complete


@pytest.mark.parametrize(
    "body",
    [
        b'{"seq":42,"ts":1700000000123,"pad":"xx"}',
        b'{"ts": 1700000000123, "pad": "", "seq": 42}',  # other order and spacing: JSON path
    ],
)
def test_parse_seq_ts(body: bytes) -> None:
    assert parse_seq_ts(body) == (42, 1700000000123)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0  # round(0.5 * 99) = 50 -> the 51st value
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) is None


def test_rounds_merge_into_one_result() -> None:
    from bench.run import Result, merge

    a = Result("s", "srv", "bridge", 100, seconds=1.0, cpu_s=0.5, peak_rss_mb=50.0, missing=1)
    a.set_latencies([1.0] * 100)
    b = Result("s", "srv", "bridge", 100, seconds=1.0, cpu_s=0.3, peak_rss_mb=60.0, duplicates=2)
    b.set_latencies([3.0] * 99 + [9.0])
    m = merge([a, b])
    assert (m.n, m.seconds, m.cpu_s, m.peak_rss_mb) == (200, 2.0, 0.8, 60.0)
    assert (m.missing, m.duplicates) == (1, 2)
    assert m.rate == 100.0
    assert m.p50_ms in (1.0, 3.0)
    assert m.p99_ms == 3.0  # nearest rank of 200 samples: the single 9.0 is beyond p99
