"""Several replicas, one active per endpoint (``BRIDGE_COORDINATION=rabbitmq``): bridge
processes against a Salesforce-like server (replay from the stored position) and the real
RabbitMQ. Each test counts every ``data.payload.seq`` that reached the queue (0 missing) and
checks the ``cometd-lease-epoch`` header of what arrived.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.e2e.ha import Replicas, replica_group, wait_role
from tests.e2e.harness import BridgeProcess, QueueCollector
from tests.e2e.test_noloss_faults import (
    CHANNEL,
    check_complete,
    pausable_proxy,
    payload_seqs,
    sample,
    sf_env,
    wait_seqs,
)
from tests.fixtures.rabbitmq import close_named_connections
from tests.integration.noloss.conftest import SalesforceServer


pytestmark = pytest.mark.integration

RATE = 200  # events per second from the server
COUNT = 1600  # eight seconds of streaming
WAIT = 40.0  # bound on waits for deliveries (a busy 2-core machine)
FAILOVER_BOUND = 10.0  # the standby streams within this after the active died


@pytest.fixture
def endpoint_name() -> str:
    """Unique: its lease and positions queues are shared by name across replicas."""
    return f"ha{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def replicas(
    amqp_url: str,
    tmp_path: Path,
    sf_server: SalesforceServer,
    exchange_name: str,
    endpoint_name: str,
) -> AsyncIterator[Replicas]:
    env = sf_env(tmp_path, sf_server, exchange_name)
    async with replica_group(amqp_url, tmp_path, env, [endpoint_name]) as group:
        yield group


def epochs(collector: QueueCollector) -> list[int]:
    return [int(d.headers["cometd-lease-epoch"]) for d in collector.deliveries]


def connection_name(bridge: BridgeProcess) -> str:
    assert bridge.proc is not None
    return f"cometd-bridge/{bridge.env['BRIDGE_REPLICA_ID']}/{bridge.proc.pid}"


async def first_delivery_with_epoch(collector: QueueCollector, epoch: int, within: float) -> float:
    deadline = time.monotonic() + within
    while epoch not in epochs(collector):
        if time.monotonic() > deadline:
            raise AssertionError(f"no message with lease epoch {epoch} within {within}s")
        await collector.wait_for(len(collector.deliveries) + 1, 0.2, quiet=True)
    return time.monotonic()


async def streaming_pair(
    replicas: Replicas,
    server: SalesforceServer,
    collector: QueueCollector,
    endpoint: str,
    **active_env: str,
) -> tuple[BridgeProcess, BridgeProcess, int]:
    """An active and a standby replica, the server publishing ``COUNT`` events, a quarter of
    them streamed by the active; returns both and the active's lease epoch."""
    active = await replicas.start("replica-a", **active_env)
    await wait_role(active, endpoint, "active", within=WAIT)
    standby = await replicas.start("replica-b")
    status = await standby.status()
    assert status["replica"] == "replica-b"
    assert status["endpoints"][endpoint]["role"] == "standby", status
    await server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
    await collector.wait_for(COUNT // 4, within=WAIT, what="streamed by the active")
    return active, standby, epochs(collector)[0]


def assert_fenced(collector: QueueCollector, first_epoch: int) -> None:
    """Fencing as a consumer sees it: once the new owner's first message arrived, nothing of
    the deposed owner's epoch follows."""
    seen = epochs(collector)
    new = first_epoch + 1
    late = [e for e in seen[seen.index(new) :] if e < new]
    assert not late, f"{len(late)} messages of the deposed owner after the new owner's first"


async def test_sigkill_of_the_active_the_standby_takes_over_with_nothing_missing(
    replicas: Replicas,
    sf_server: SalesforceServer,
    collector: QueueCollector,
    endpoint_name: str,
    record_property: Callable[[str, object], None],
) -> None:
    active, standby, first_epoch = await streaming_pair(
        replicas, sf_server, collector, endpoint_name
    )
    # The standby never subscribed while the active lived: one session, one subscription at
    # the server, and no handshake by the standby.
    stats = await sf_server.stats()
    assert stats["sessions"] == 1, stats
    assert stats["subscriptions"].get(CHANNEL) == 1, stats
    standby_metrics = await standby.metrics()
    assert not sample(standby_metrics, "cometd_bridge_handshakes_total", result="success")
    assert sample(standby_metrics, "cometd_bridge_endpoint_active", endpoint=endpoint_name) == 0

    active.stop()  # SIGKILL
    killed = time.monotonic()
    took_over = await first_delivery_with_epoch(collector, first_epoch + 1, FAILOVER_BOUND)
    failover = took_over - killed
    record_property("failover_seconds", round(failover, 2))
    print(f"failover after SIGKILL: first message of the new owner {failover:.2f} s later")

    await wait_seqs(collector, COUNT, within=WAIT)
    check_complete(collector, COUNT, record_property)
    assert set(epochs(collector)) == {first_epoch, first_epoch + 1}
    metrics = await standby.metrics()
    assert sample(metrics, "cometd_bridge_endpoint_active", endpoint=endpoint_name) == 1
    assert (
        sample(
            metrics, "cometd_bridge_lease_changes_total", endpoint=endpoint_name, reason="acquired"
        )
        == 1
    )


async def test_broker_closes_the_active_connection_the_deposed_owner_stops(
    replicas: Replicas,
    sf_server: SalesforceServer,
    collector: QueueCollector,
    endpoint_name: str,
    record_property: Callable[[str, object], None],
) -> None:
    active, standby, first_epoch = await streaming_pair(
        replicas, sf_server, collector, endpoint_name
    )

    assert await close_named_connections(connection_name(active), "HA fencing test") == 1
    await wait_role(standby, endpoint_name, "active", within=FAILOVER_BOUND)
    await wait_role(active, endpoint_name, "standby", within=FAILOVER_BOUND)
    await wait_seqs(collector, COUNT, within=WAIT)
    check_complete(collector, COUNT, record_property)

    assert_fenced(collector, first_epoch)
    # The deposed owner stopped its session: one session and subscription at the server.
    stats = await sf_server.stats()
    assert stats["subscriptions"].get(CHANNEL) == 1, stats
    metrics = await active.metrics()
    lost = sample(
        metrics, "cometd_bridge_lease_changes_total", endpoint=endpoint_name, reason="lost"
    )
    assert lost == 1, lost
    assert sample(metrics, "cometd_bridge_endpoint_active", endpoint=endpoint_name) == 0
    # It is a candidate again once its connection is back: ready as a standby.
    status, _ = await active.get("/readyz")
    assert status == 200


async def test_sigterm_of_the_active_hands_over_with_nothing_missing(
    replicas: Replicas,
    sf_server: SalesforceServer,
    collector: QueueCollector,
    endpoint_name: str,
    record_property: Callable[[str, object], None],
) -> None:
    active, _standby, first_epoch = await streaming_pair(
        replicas, sf_server, collector, endpoint_name
    )

    active.signal(signal.SIGTERM)
    assert await active.wait_exit(within=WAIT) == 0, active.log_tail()
    await first_delivery_with_epoch(collector, first_epoch + 1, FAILOVER_BOUND)
    await wait_seqs(collector, COUNT, within=WAIT)
    duplicates = check_complete(collector, COUNT, record_property)
    # The active stored the position of everything the broker confirmed before releasing:
    # the new owner replays from there, so nothing is sent twice.
    assert duplicates == 0, duplicates
    seqs_by_epoch: dict[int, list[int]] = {}
    for d, seq in zip(collector.deliveries, payload_seqs(collector), strict=True):
        seqs_by_epoch.setdefault(int(d.headers["cometd-lease-epoch"]), []).append(seq)
    assert max(seqs_by_epoch[first_epoch]) < min(seqs_by_epoch[first_epoch + 1])


HEARTBEAT = 2  # seconds; a blackholed connection is declared dead after about twice this


async def test_the_active_blackholed_the_deposed_owner_stops_within_the_heartbeat_timeout(
    replicas: Replicas,
    sf_server: SalesforceServer,
    collector: QueueCollector,
    endpoint_name: str,
    record_property: Callable[[str, object], None],
) -> None:
    async with pausable_proxy() as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat={HEARTBEAT}"
        active, standby, first_epoch = await streaming_pair(
            replicas, sf_server, collector, endpoint_name, BRIDGE_AMQP_URL=url
        )

        proxy.pause()  # nothing passes either way: a partition between the active and RabbitMQ
        paused = time.monotonic()
        bound = 3 * HEARTBEAT + FAILOVER_BOUND
        # The deposed owner notices through its own heartbeats and stops its session; it
        # still answers HTTP, so this is observed from outside, as an operator would.
        await wait_role(active, endpoint_name, "standby", within=bound)
        stopped = time.monotonic() - paused
        await wait_role(standby, endpoint_name, "active", within=bound)
        print(f"blackholed: the deposed owner stopped {stopped:.1f} s after the partition")
        record_property("deposed_stopped_seconds", round(stopped, 1))
        proxy.resume()
        await wait_seqs(collector, COUNT, within=WAIT)
    check_complete(collector, COUNT, record_property)
    assert_fenced(collector, first_epoch)
    metrics = await active.metrics()
    changes = "cometd_bridge_lease_changes_total"
    assert sample(metrics, changes, endpoint=endpoint_name, reason="lost") == 1
