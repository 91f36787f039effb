"""Several replicas, one active per endpoint (``BRIDGE_COORDINATION=rabbitmq``): bridge
processes against a Salesforce-like server (replay from the stored position) and the real
RabbitMQ. Each test counts every ``data.payload.seq`` that reached the queue (0 missing) and
checks the ``cometd-lease-epoch`` header of what arrived.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import pytest

from bridge.amqp.lease import lease_queue
from bridge.positions.rabbitmq_store import position_queue
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
from tests.integration.noloss.conftest import (
    SalesforceFactory,
    SalesforceServer,
    salesforce_factory,  # noqa: F401 (the fixture)
)


pytestmark = pytest.mark.integration

RATE = 200  # events per second from the server
COUNT = 1600  # eight seconds of streaming
WAIT = 40.0  # bound on waits for deliveries (a busy 2-core machine)
FAILOVER_BOUND = 10.0  # the standby streams within this after the active died


@pytest.fixture
def sf_server(request: pytest.FixtureRequest) -> SalesforceServer:
    factory: SalesforceFactory = request.getfixturevalue("salesforce_factory")
    return factory()


@pytest.fixture
async def endpoint_name(amqp_url: str) -> AsyncIterator[str]:
    """A unique endpoint name (its lease and positions queues are shared by name across
    replicas, so never across tests); both queues are deleted afterwards."""
    name = f"ha{uuid.uuid4().hex[:8]}"
    yield name
    conn = await aio_pika.connect(amqp_url)
    try:
        for queue in (lease_queue(name), position_queue(name)):
            with contextlib.suppress(Exception):
                channel = await conn.channel()
                await channel.queue_delete(queue)
    finally:
        await conn.close()


class Replicas:
    """Bridge processes with the same configuration, each named by its replica id."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self._tmp = tmp_path
        self._env = env
        self.started: dict[str, BridgeProcess] = {}

    async def start(self, replica: str, **extra: str) -> BridgeProcess:
        env = {
            **self._env,
            **extra,
            "BRIDGE_COORDINATION": "rabbitmq",
            "BRIDGE_REPLICA_ID": replica,
            "BRIDGE_STATE_DIR": str(self._tmp / f"state-{replica}"),
        }
        bridge = BridgeProcess(env=env, log_path=self._tmp / f"{replica}.log")
        bridge.start()
        self.started[replica] = bridge
        await bridge.wait_ready()
        return bridge

    def stop_all(self) -> None:
        for bridge in self.started.values():
            bridge.stop()


@pytest.fixture
async def replicas(
    tmp_path: Path, sf_server: SalesforceServer, exchange_name: str, endpoint_name: str
) -> AsyncIterator[Replicas]:
    env = sf_env(tmp_path, sf_server, exchange_name)
    env["BRIDGE_ENDPOINTS"] = env["BRIDGE_ENDPOINTS"].replace('"src"', f'"{endpoint_name}"', 1)
    group = Replicas(tmp_path, env)
    try:
        yield group
    finally:
        group.stop_all()


async def wait_role(bridge: BridgeProcess, endpoint: str, role: str, within: float) -> float:
    """Wait until ``bridge`` reports ``role`` for ``endpoint``; returns when (monotonic)."""
    await bridge.wait_status(lambda s: s["endpoints"][endpoint]["role"] == role, within=within)
    return time.monotonic()


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


async def two_replicas(
    replicas: Replicas, endpoint: str, **active_env: str
) -> tuple[BridgeProcess, BridgeProcess]:
    active = await replicas.start("replica-a", **active_env)
    await wait_role(active, endpoint, "active", within=WAIT)
    standby = await replicas.start("replica-b")
    status = await standby.status()
    assert status["replica"] == "replica-b"
    assert status["endpoints"][endpoint]["role"] == "standby", status
    return active, standby


async def test_sigkill_of_the_active_the_standby_takes_over_with_nothing_missing(
    replicas: Replicas,
    sf_server: SalesforceServer,
    collector: QueueCollector,
    endpoint_name: str,
    record_property: Callable[[str, object], None],
) -> None:
    active, standby = await two_replicas(replicas, endpoint_name)
    await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
    await collector.wait_for(COUNT // 4, within=WAIT, what="streamed by the active")
    # The standby never subscribed while the active lived: one session, one subscription at
    # the server, and no handshake by the standby.
    stats = await sf_server.stats()
    assert stats["sessions"] == 1, stats
    assert stats["subscriptions"].get(CHANNEL) == 1, stats
    standby_metrics = await standby.metrics()
    assert not sample(standby_metrics, "cometd_bridge_handshakes_total", result="success")
    assert sample(standby_metrics, "cometd_bridge_endpoint_active", endpoint=endpoint_name) == 0
    first_epoch = epochs(collector)[0]

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
    active, standby = await two_replicas(replicas, endpoint_name)
    await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
    await collector.wait_for(COUNT // 4, within=WAIT, what="streamed by the active")
    first_epoch = epochs(collector)[0]

    assert await close_named_connections(connection_name(active), "HA fencing test") == 1
    await wait_role(standby, endpoint_name, "active", within=FAILOVER_BOUND)
    await wait_role(active, endpoint_name, "standby", within=FAILOVER_BOUND)
    await wait_seqs(collector, COUNT, within=WAIT)
    check_complete(collector, COUNT, record_property)

    # Fencing as a consumer sees it: once the new owner's first message arrived, nothing of
    # the deposed owner's epoch follows.
    seen = epochs(collector)
    new = first_epoch + 1
    first_new = seen.index(new)
    late = [e for e in seen[first_new:] if e < new]
    assert not late, f"{len(late)} messages of the deposed owner after the new owner's first"
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
    active, _standby = await two_replicas(replicas, endpoint_name)
    await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
    await collector.wait_for(COUNT // 4, within=WAIT, what="streamed by the active")
    first_epoch = epochs(collector)[0]

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
        active, standby = await two_replicas(replicas, endpoint_name, BRIDGE_AMQP_URL=url)
        await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
        await collector.wait_for(COUNT // 4, within=WAIT, what="streamed by the active")
        first_epoch = epochs(collector)[0]

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
    seen = epochs(collector)
    new = first_epoch + 1
    late = [e for e in seen[seen.index(new) :] if e < new]
    assert not late, f"{len(late)} messages of the deposed owner after the new owner's first"
    metrics = await active.metrics()
    changes = "cometd_bridge_lease_changes_total"
    assert sample(metrics, changes, endpoint=endpoint_name, reason="lost") == 1
