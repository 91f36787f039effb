"""The bridge process end to end: real CometD servers → `cometd-bridge run` → real RabbitMQ."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import bridge_env
from tests.e2e.harness import QueueCollector, free_port, running_bridge
from tests.e2e.test_noloss_faults import connection_name, pausable_proxy, wait_sample
from tests.fixtures.rabbitmq import close_named_connections
from tests.fixtures.servers import NodeBayeuxServer


pytestmark = pytest.mark.integration

CHANNEL = "/orders/created"


async def test_every_message_arrives_exactly_once_with_the_contract(
    bayeux_server: NodeBayeuxServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
) -> None:
    count = 3000
    endpoint = {
        "url": bayeux_server.url,
        "channels": [CHANNEL],
        "connection_types": [bayeux_server.connection_type],
        "exchange": exchange_name,
    }
    async with running_bridge(bridge_env(tmp_path, {"src": endpoint}), tmp_path) as bridge:
        await bayeux_server.publish(CHANNEL, count, size=200)
        await collector.wait_for(count, within=60)
        metrics = await bridge.metrics()

    seqs = collector.seqs()
    assert sorted(seqs) == list(range(1, count + 1)), "every message exactly once"
    first = collector.deliveries[0]
    assert first.routing_key == "orders.created"
    assert first.content_type == "application/json"
    assert first.delivery_mode == 2
    assert first.headers["cometd-endpoint"] == "src"
    assert first.headers["cometd-channel"] == CHANNEL
    assert set(first.body) == {"seq", "ts", "pad"}
    assert first.message_id is not None
    assert first.message_id.startswith(f"src:{CHANNEL}:")
    assert len({d.message_id for d in collector.deliveries}) == count
    assert metrics['cometd_bridge_messages_received_total{endpoint="src"}'] == count
    assert metrics['cometd_bridge_messages_published_total{endpoint="src"}'] == count
    assert metrics['cometd_bridge_endpoint_up{endpoint="src"}'] == 1


async def test_rabbitmq_connection_closed_mid_stream_loses_nothing(
    cometd_server: NodeBayeuxServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
) -> None:
    count = 2000
    endpoint = {"url": cometd_server.url, "channels": [CHANNEL], "exchange": exchange_name}
    async with pausable_proxy() as proxy:
        env = bridge_env(
            tmp_path,
            {"src": endpoint},
            BRIDGE_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
        )
        async with running_bridge(env, tmp_path) as bridge:
            await cometd_server.publish(CHANNEL, count, size=100, rate=1000, wait=False)
            await collector.wait_for(300, within=30)
            # Publishes are held from now on, so the close (rabbitmqctl: seconds here) always
            # finds unconfirmed messages, which the broker never saw.
            proxy.hold_publishes()
            await wait_sample(bridge, "cometd_bridge_inflight_messages", 1, endpoint="src")
            closed = await close_named_connections(
                connection_name(bridge), "e2e test: broker connection lost"
            )
            assert closed == 1
            await wait_sample(
                bridge,
                "cometd_bridge_publish_failures_total",
                1,
                endpoint="src",
                reason="connection",
            )
            proxy.resume()
            await collector.wait_for(count, within=60)
            metrics = await bridge.metrics()

    assert set(collector.seqs()) == set(range(1, count + 1)), "zero missing"
    assert len(collector.seqs()) == count, "zero duplicates: the held publishes never arrived"
    assert metrics['cometd_bridge_messages_received_total{endpoint="src"}'] == count
    redelivered = metrics['cometd_bridge_duplicates_redelivered_total{endpoint="src"}']
    assert redelivered >= 1, "the unconfirmed messages were published again"


async def test_a_dead_endpoint_does_not_stop_the_others(
    cometd_server: NodeBayeuxServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/cometd"
    endpoints = {
        "good": {"url": cometd_server.url, "channels": [CHANNEL], "exchange": exchange_name},
        "dead": {"url": dead_url, "channels": [CHANNEL], "exchange": exchange_name},
    }
    env = bridge_env(tmp_path, endpoints)
    async with running_bridge(env, tmp_path, wait_ready=False) as bridge:
        # Not ready while an endpoint is down, and /readyz names it.
        await bridge.wait_status(lambda s: s["endpoints"]["good"]["up"], within=30)
        status, body = await bridge.get("/readyz")
        assert status == 503
        assert "dead" in body
        assert "good" not in body.split("endpoints not streaming", 1)[-1]

        await cometd_server.publish(CHANNEL, 200)
        await collector.wait_for(200, within=30)
        metrics = await bridge.metrics()

    assert sorted(collector.seqs()) == list(range(1, 201))
    assert metrics['cometd_bridge_endpoint_up{endpoint="good"}'] == 1
    assert metrics['cometd_bridge_endpoint_up{endpoint="dead"}'] == 0


async def test_sigterm_while_streaming_publishes_everything_received(
    cometd_server: NodeBayeuxServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
) -> None:
    endpoint = {"url": cometd_server.url, "channels": [CHANNEL], "exchange": exchange_name}
    async with running_bridge(bridge_env(tmp_path, {"src": endpoint}), tmp_path) as bridge:
        await cometd_server.publish(CHANNEL, 5000, size=100, rate=2000, wait=False)
        await collector.wait_for(500, within=30)
        bridge.signal(signal.SIGTERM)
        assert await bridge.wait_exit(within=30) == 0
        totals = bridge.final_totals()

    received = totals["src"]["received"]
    assert received >= 500
    assert totals["src"]["confirmed"] == received
    await collector.wait_for(received, within=10)
    assert sorted(set(collector.seqs())) == list(range(1, received + 1))


async def test_unroutable_messages_are_counted_and_logged(
    cometd_server: NodeBayeuxServer, exchange_name: str, tmp_path: Path
) -> None:
    # No queue is bound to the exchange: every message comes back from the broker.
    endpoint = {"url": cometd_server.url, "channels": [CHANNEL], "exchange": exchange_name}
    async with running_bridge(bridge_env(tmp_path, {"src": endpoint}), tmp_path) as bridge:
        await cometd_server.publish(CHANNEL, 50)
        await bridge.wait_metric(
            'cometd_bridge_unroutable_total{action="logged",endpoint="src"}', 50, within=30
        )
    # Each returned message is logged with its message_id (the README's promise).
    logged = {
        m
        for e in bridge.log_events()
        if "unroutable" in e["event"]
        for m in re.findall(r"message_id=(\S+)", e["event"])
    }
    assert len(logged) == 50, f"{len(logged)} distinct message ids logged: {sorted(logged)[:5]}"
    assert all(m.startswith(f"src:{CHANNEL}:") for m in logged), sorted(logged)[:5]


async def test_unroutable_messages_go_to_the_alternate_exchange(
    cometd_server: NodeBayeuxServer, exchange_name: str, tmp_path: Path
) -> None:
    alternate = f"{exchange_name}.unrouted"
    ae_collector = QueueCollector()
    await ae_collector.start(alternate, exchange_type="fanout", binding="")
    try:
        endpoint = {
            "url": cometd_server.url,
            "channels": [CHANNEL],
            "exchange": exchange_name,
            "alternate_exchange": alternate,
        }
        env = bridge_env(tmp_path, {"src": endpoint})
        async with running_bridge(env, tmp_path):
            await cometd_server.publish(CHANNEL, 100)
            await ae_collector.wait_for(100, within=30)
    finally:
        await ae_collector.close()
    assert sorted(ae_collector.seqs()) == list(range(1, 101))


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "BRIDGE_ENDPOINTS"),
        ({"BRIDGE_ENDPOINTS": "{not json"}, "BRIDGE_ENDPOINTS"),
        ({"BRIDGE_ENDPOINTS": json.dumps({"a": {"channels": ["/x"]}})}, "URL"),
        (
            {
                "BRIDGE_ENDPOINTS": json.dumps(
                    {"a": {"url": "http://h/c", "channels": ["/x"], "connection_types": "smoke"}}
                )
            },
            "CONNECTION_TYPES",
        ),
        (
            {
                "BRIDGE_ENDPOINTS": json.dumps(
                    {"a": {"url": "http://h/c", "channels": ["/x"], "max_pending_count": -5}}
                )
            },
            "MAX_PENDING_COUNT",
        ),
    ],
    ids=["missing-endpoints", "bad-json", "missing-url", "bad-connection-type", "negative-limit"],
)
async def test_bad_configuration_stops_with_exit_2_naming_the_variable(
    env: dict[str, str], variable: str, tmp_path: Path
) -> None:
    async with running_bridge(env, tmp_path, wait_ready=False, clear_env=True) as bridge:
        code = await bridge.wait_exit(within=30)
    output = bridge.log_path.read_text()
    assert code == 2, output
    assert variable in output.upper()
    assert "Traceback" not in output


async def test_broker_down_at_start_keeps_the_process_up_and_unready(
    cometd_server: NodeBayeuxServer, tmp_path: Path
) -> None:
    endpoint = {"url": cometd_server.url, "channels": [CHANNEL]}
    env = bridge_env(
        tmp_path, {"src": endpoint}, BRIDGE_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    )
    async with running_bridge(env, tmp_path, wait_ready=False) as bridge:
        await bridge.wait_status(lambda s: s["amqp_connected"] is False, within=30)
        assert (await bridge.get("/healthz"))[0] == 200
        status, body = await bridge.get("/readyz")
        assert status == 503
        assert "AMQP" in body
        bridge.signal(signal.SIGTERM)
        assert await bridge.wait_exit(within=30) == 0
    assert "AMQP connection failed" in bridge.log_path.read_text()
