"""Three replicas x twelve endpoints (``BRIDGE_COORDINATION=rabbitmq``): exactly one
subscription per endpoint at the server, 4/4/4 ownership; a replica killed → its endpoints move
to the others within 10 s, and back by handover when it returns."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bridge.amqp.lease import lease_queue
from bridge.positions.rabbitmq_store import position_queue
from tests.e2e.test_ha_failover import Replicas
from tests.e2e.test_noloss_faults import CHANNEL, sf_env
from tests.integration.noloss.conftest import (
    SalesforceFactory,
    SalesforceServer,
    salesforce_factory,  # noqa: F401 (the fixture)
)


pytestmark = pytest.mark.integration

ENDPOINTS = 12
WAIT = 30.0


@pytest.fixture
def sf_server(request: pytest.FixtureRequest) -> SalesforceServer:
    factory: SalesforceFactory = request.getfixturevalue("salesforce_factory")
    return factory()


@pytest.fixture
async def endpoint_names(amqp_url: str) -> AsyncIterator[list[str]]:
    prefix = f"hb{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(ENDPOINTS)]
    yield names
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        for name in names:
            for queue in (lease_queue(name), position_queue(name)):
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
    finally:
        await conn.close()


@pytest.fixture
async def replicas(
    tmp_path: Path, sf_server: SalesforceServer, exchange_name: str, endpoint_names: list[str]
) -> AsyncIterator[Replicas]:
    env = sf_env(tmp_path, sf_server, exchange_name)
    (config,) = json.loads(env["BRIDGE_ENDPOINTS"]).values()
    env["BRIDGE_ENDPOINTS"] = json.dumps(dict.fromkeys(endpoint_names, config))
    group = Replicas(tmp_path, env)
    try:
        yield group
    finally:
        group.stop_all()


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


async def test_three_replicas_twelve_endpoints_four_each_and_a_kill_moves_four(
    replicas: Replicas, sf_server: SalesforceServer
) -> None:
    for replica in ("r1", "r2", "r3"):
        await replicas.start(replica)
    await wait_ownership(replicas, {"r1": 4, "r2": 4, "r3": 4}, within=WAIT)
    stats = await sf_server.stats()
    assert stats["subscriptions"].get(CHANNEL) == ENDPOINTS, stats

    replicas.started["r3"].stop()  # SIGKILL
    killed = time.monotonic()
    await wait_ownership(replicas, {"r1": 6, "r2": 6}, within=10.0)
    print(f"the killed replica's endpoints moved in {time.monotonic() - killed:.1f} s")

    # Restarted: the others hand endpoints over to it (drain, store, release) until 4/4/4.
    before = {r: await handed_over(replicas, r) for r in ("r1", "r2")}
    await replicas.start("r3b")
    await wait_ownership(replicas, {"r1": 4, "r2": 4, "r3b": 4}, within=WAIT)
    stats = await sf_server.stats()
    assert stats["subscriptions"].get(CHANNEL) == ENDPOINTS, stats
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
