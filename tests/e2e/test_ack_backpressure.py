"""Back-pressure on an ack server, end to end: the bridge process, the Salesforce-like server
with cometd-nodejs-server's acknowledgement extension (no replay) and real RabbitMQ behind a
proxy that stops forwarding (a broker gone very slow) for longer than the server's reconnect
budget. The bridge keeps its CometD session alive with the ack held, so nothing is lost: every
``data.payload.seq`` reaches the queue, on the same session, with no possible gap counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import QueueCollector, running_bridge
from tests.e2e.test_noloss_faults import (
    CHANNEL,
    COUNT,
    RATE,
    check_complete,
    pausable_proxy,
    sample,
    sf_env,
    wait_sample,
    wait_seqs,
)
from tests.integration.noloss.conftest import (
    SalesforceFactory,
    salesforce_factory,  # noqa: F401 (the fixture)
)


pytestmark = pytest.mark.integration

MAX_INTERVAL_MS = 2000  # the server's reconnect budget after each reply


async def test_ack_server_keeps_the_session_through_a_stalled_broker(
    request: pytest.FixtureRequest,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    factory: SalesforceFactory = request.getfixturevalue("salesforce_factory")
    # The held timeout (1 s) paces the keep-alive connects at 0.5 s, inside the 2 s budget.
    server = factory(ack=1, replay=0, timeout=1000, max_interval=MAX_INTERVAL_MS)
    async with pausable_proxy() as proxy:
        env = sf_env(tmp_path, server, exchange_name, replay="off", ack="on", max_pending_count=50)
        env["BRIDGE_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with running_bridge(env, tmp_path) as bridge:
            await server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
            await collector.wait_for(COUNT // 5, within=60.0)
            sessions = (await server.stats())["session_ids"]
            assert len(sessions) == 1
            proxy.pause()
            await wait_sample(bridge, "cometd_bridge_fetch_paused", 1, endpoint="src")
            # The fault's length (three reconnect budgets) is the point, not a synchronisation.
            await asyncio.sleep(3 * MAX_INTERVAL_MS / 1000)
            assert (await server.stats())["session_ids"] == sessions, "the session survived"
            proxy.resume()
            await wait_seqs(collector, COUNT)
            metrics = await bridge.metrics()
            status = (await bridge.status())["endpoints"]["src"]
    assert status["delivery"] == "ack"
    assert status["ack_shed"] > 0, "new messages were left with the server while full"
    assert check_complete(collector, COUNT, record_property) == 0, "0 duplicates"
    record_property("ack_shed", status["ack_shed"])
    print(f"left with the server while the buffer was full: {status['ack_shed']}")
    assert not sample(metrics, "cometd_bridge_possible_gaps_total", endpoint="src")
    handshakes = sample(metrics, "cometd_bridge_handshakes_total", endpoint="src", result="success")
    assert handshakes == 1, "no re-handshake"
    reconnects = {
        key: value
        for key, value in metrics.items()
        if key.startswith("cometd_bridge_reconnects_total{") and 'endpoint="src"' in key and value
    }
    assert not reconnects, "no reconnect of any kind"
