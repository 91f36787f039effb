"""Three replicas x twelve endpoints (``BRIDGE_COORDINATION=rabbitmq``): exactly one
subscription per endpoint at the server, 4/4/4 ownership; a replica killed → its endpoints move
to the others within 10 s, and back by handover when it returns."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.ha import Replicas, replica_group
from tests.e2e.test_noloss_faults import CHANNEL, sf_env
from tests.integration.noloss.conftest import SalesforceServer


pytestmark = pytest.mark.integration

ENDPOINTS = 12
WAIT = 30.0


@pytest.fixture
async def replicas(
    amqp_url: str, tmp_path: Path, sf_server: SalesforceServer, exchange_name: str
) -> AsyncIterator[Replicas]:
    prefix = f"hb{uuid.uuid4().hex[:6]}"  # unique: lease and positions queues go by name
    names = [f"{prefix}-{i}" for i in range(ENDPOINTS)]
    env = sf_env(tmp_path, sf_server, exchange_name)
    async with replica_group(amqp_url, tmp_path, env, names) as group:
        yield group


def active_endpoints(status: Any) -> set[str]:
    """The endpoints the replica owns and streams (subscribed)."""
    return {
        name
        for name, ep in status["endpoints"].items()
        if ep["role"] == "active" and ep["state"] == "streaming"
    }


async def wait_ownership(
    replicas: Replicas, expected: dict[str, int], within: float
) -> dict[str, set[str]]:
    """Wait until each named replica owns exactly the expected number of endpoints and every
    endpoint has one owner."""
    deadline = time.monotonic() + within
    owned: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            owned = {r: active_endpoints(await replicas.started[r].status()) for r in expected}
            all_owned = [e for names in owned.values() for e in names]
            if {r: len(v) for r, v in owned.items()} == expected and len(all_owned) == len(
                set(all_owned)
            ) == ENDPOINTS:
                return owned
        await replicas.started[next(iter(expected))].get("/healthz")  # paces the poll
    counts = {r: sorted(v) for r, v in owned.items()}
    raise AssertionError(f"ownership not {expected} within {within}s: {counts}")


async def one_subscription_each(sf_server: SalesforceServer, within: float) -> None:
    """Wait until the server holds exactly one subscription per endpoint. A SIGKILLed replica
    cannot disconnect: the server drops its sessions only when they expire (its maxInterval,
    2 s here), and it offers no event for that, so its statistics are read every 0.2 s."""
    deadline = time.monotonic() + within
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = await sf_server.stats()
        if stats["subscriptions"].get(CHANNEL) == ENDPOINTS:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not one subscription per endpoint within {within}s: {stats}")


async def test_three_replicas_twelve_endpoints_four_each_and_a_kill_moves_four(
    replicas: Replicas, sf_server: SalesforceServer
) -> None:
    for replica in ("r1", "r2", "r3"):
        await replicas.start(replica)
    await wait_ownership(replicas, {"r1": 4, "r2": 4, "r3": 4}, within=WAIT)
    await one_subscription_each(sf_server, within=10.0)

    replicas.started["r3"].stop()  # SIGKILL
    killed = time.monotonic()
    await wait_ownership(replicas, {"r1": 6, "r2": 6}, within=10.0)
    print(f"the killed replica's endpoints moved in {time.monotonic() - killed:.1f} s")

    # Restarted: the others hand endpoints over to it (drain, store, release) until 4/4/4.
    before = {r: await handed_over(replicas, r) for r in ("r1", "r2")}
    await replicas.start("r3b")
    await wait_ownership(replicas, {"r1": 4, "r2": 4, "r3b": 4}, within=WAIT)
    # The killed replica's four sessions expire at the server; none of the live ones doubles.
    await one_subscription_each(sf_server, within=10.0)
    moved = {r: await handed_over(replicas, r) - before[r] for r in ("r1", "r2")}
    # At least the four it now owns came by graceful handover (more when a replica's count of
    # the replicas lagged behind the other's for a round and a token went back and forth).
    assert sum(moved.values()) >= 4, moved
    print(f"handed over to the restarted replica: {moved}")


async def handed_over(replicas: Replicas, replica: str) -> float:
    metrics = await replicas.started[replica].metrics()
    return sum(
        v
        for k, v in metrics.items()
        if k.startswith("cometd_bridge_lease_changes_total{") and 'reason="handed_over"' in k
    )
