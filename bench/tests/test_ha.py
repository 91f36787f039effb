"""The HA bench end to end at a small size (``--only ha --quick``): replicas settle and move
every message, and each SIGKILL of the active is followed by the standby's messages with
nothing missing (no timing is asserted beyond a bound: figures are the bench's output)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bench.ha import TAKEOVER_TIMEOUT, HaBench, failover_lines, markdown, scale_lines
from bench.run import parse_args


pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENDPOINTS = 6
N = 3000


@pytest.fixture
async def bench() -> AsyncIterator[HaBench]:
    b = HaBench()
    await b.setup()
    try:
        yield b
    finally:
        await b.teardown()


def test_quick_ha_options() -> None:
    args = parse_args(["--only", "ha", "--quick"])
    assert (args.n, args.ha_endpoints, args.ha_kills, args.ha_steady) == (N, ENDPOINTS, 3, 0.5)
    assert args.ha_rounds == 1
    full = parse_args(["--only", "ha"])
    assert (full.n, full.ha_endpoints, full.ha_kills, full.ha_rounds) == (60_000, 30, 10, 2)


async def test_busy_endpoints_over_one_bridge_and_one_and_three_replicas(bench: HaBench) -> None:
    results = []
    setups = ((1, "file", [ENDPOINTS]), (1, "rabbitmq", [ENDPOINTS]), (3, "rabbitmq", [2, 2, 2]))
    for replicas, coordination, shares in setups:
        r = await bench.scale_out(replicas, ENDPOINTS, N, coordination)
        print("\n".join(scale_lines(r)))
        assert r.note == ""
        assert (r.n, r.missing, r.duplicates) == (N, 0, 0)
        assert r.rate is not None
        assert r.rate > 0
        assert sorted(p.owned for p in r.per_replica) == shares
        # CPU is read in 10 ms ticks: a replica's own share of a small burst may be a tick or
        # none, the replicas' sum is several.
        assert r.cpu_s > 0, r.per_replica
        assert all(p.peak_rss_mb > 0 for p in r.per_replica), r.per_replica
        results.append(r)
    text = markdown(results, None, {}, 0.0)
    assert text.count("\n| 6 | ") == 3, text


async def test_every_sigkill_of_the_active_is_taken_over_with_nothing_missing(
    bench: HaBench,
) -> None:
    r = await bench.failover(kills=3, rate=200, steady_s=0.5)
    print("\n".join(failover_lines(r)))
    assert r.note == ""
    assert r.published >= 300  # three kills, each after half a second's worth at least
    assert r.missing == []
    assert len(r.takeovers) == 3
    for before, after in zip(r.takeovers, r.takeovers[1:], strict=False):
        assert after.old_epoch == before.new_epoch  # the new owner is the next one killed
    for t in r.takeovers:
        assert t.new_epoch is not None
        assert t.new_epoch > t.old_epoch
        assert t.seconds is not None
        assert 0 < t.seconds < TAKEOVER_TIMEOUT
    summary = r.summary()
    assert summary is not None
    assert summary[0] <= summary[1] <= summary[2]
