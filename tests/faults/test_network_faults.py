"""Resets at random points, stalls, delay and throttling between the bridge and a replay server
(the bridge process, the Salesforce-like server, real RabbitMQ): nothing missing, no silent
stall. A seeded schedule, so a failure replays exactly."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import QueueCollector, running_bridge
from tests.faults.conftest import ProxyFactory
from tests.faults.proxy import DOWNSTREAM, UPSTREAM
from tests.faults.test_lost_responses import (
    WAIT,
    Streaming,
    endpoint_env,
    report_duplicates,
    seqs,
    wait_for_seqs,
)
from tests.integration.noloss.conftest import SalesforceFactory


pytestmark = pytest.mark.integration

SEED = 1101
ROUNDS = 4


async def wait_progress(collector: QueueCollector, after: int, what: str) -> None:
    """Wait until an event newer than seq ``after`` reached the queue."""
    deadline = time.monotonic() + WAIT
    while max(seqs(collector), default=0) <= after:
        if time.monotonic() > deadline:
            raise AssertionError(f"stalled: nothing after seq {after} within {WAIT}s of {what}")
        await collector.wait_for(
            len({d.message_id for d in collector.deliveries}) + 1, 1.0, quiet=True
        )


async def test_resets_stalls_and_slow_links_on_a_replay_server_lose_nothing(
    salesforce_factory: SalesforceFactory,
    fault_proxy_factory: ProxyFactory,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    rng = random.Random(SEED)
    server = salesforce_factory()
    proxy = await fault_proxy_factory(server.url)
    env = endpoint_env(
        tmp_path, proxy, server, exchange_name, replay="stored", replay_fallback="all"
    )
    async with running_bridge(env, tmp_path) as bridge:
        streaming = Streaming(server)
        await collector.wait_for(100, within=WAIT)
        for n in range(1, ROUNDS + 1):
            # A reset at a random point of either direction: mid-request, mid-response, between.
            direction = rng.choice([UPSTREAM, DOWNSTREAM])
            proxy.reset_after(rng.randint(1, 3000), direction)
            await proxy.wait_count("resets", n)
            await wait_progress(collector, max(seqs(collector), default=0), f"reset {n}")
            # A blackhole for longer than a held /meta/connect's round trip, then slow links.
            proxy.stall()
            await asyncio.sleep(rng.uniform(0.5, 2.5))  # the fault's duration
            proxy.resume()
            await wait_progress(collector, max(seqs(collector), default=0), f"stall {n}")
            proxy.set_delay(rng.uniform(0.05, 0.3))
            proxy.set_throttle(rng.choice([20_000, 100_000]))
            await wait_progress(collector, max(seqs(collector), default=0), f"slow link {n}")
            proxy.heal()
        count = await streaming.stop()
        await wait_for_seqs(collector, set(range(1, count + 1)))
        ready, _ = await bridge.get("/readyz")
    assert proxy.counters["resets"] == ROUNDS
    assert proxy.counters["stalls"] == ROUNDS
    assert ready == 200
    duplicates = report_duplicates(collector, record_property)
    print(f"{count} events, {ROUNDS} rounds of faults: 0 missing, {duplicates} duplicates")
