"""What ``/status`` adds for the status page, read from a real supervisor in-process (real
RabbitMQ, an in-process Bayeux source, a real token endpoint): totals, capacity, rates, the
AMQP connection and each credential's token expiry."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.demo import DemoSource
from tests.e2e.harness import QueueCollector
from tests.e2e.inprocess import endpoint_up, eventually, running_supervisor
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"


async def test_status_has_what_the_page_shows(
    amqp_url: str, exchange_name: str, collector: QueueCollector, tmp_path: Path
) -> None:
    tokens = TokenServer(lifetime=600.0)
    await tokens.start()
    try:
        async with DemoSource("127.0.0.1", 0, rate=0) as source:
            endpoint = {
                "url": source.url,
                "channels": [CHANNEL],
                "connection_types": "long-polling",
                "exchange": exchange_name,
                "max_pending_count": 777,
                "auth": {
                    "kind": "oauth2_client_credentials",
                    "token_url": tokens.token_url,
                    "client_id": tokens.client_id,
                    "client_secret": tokens.client_secret,
                    "name": "crm",
                },
            }
            async with running_supervisor(amqp_url, tmp_path, {"src": endpoint}) as sup:
                await endpoint_up(sup, "src", within=15)
                for _ in range(7):
                    source.emit(CHANNEL)
                await collector.wait_for(7, within=15, what="the emitted events")
                await eventually(lambda: sup.workers["src"].confirmed_total >= 7, 10, "7 confirmed")
                status = sup.status()
    finally:
        await tokens.stop()

    src = status["endpoints"]["src"]
    assert src["received_total"] == 7
    assert src["confirmed_total"] == 7
    assert src["pending_capacity"] == 777
    assert src["reconnects_by_reason"] == {}
    assert 0 <= src["last_message_age_seconds"] < 15
    assert set(src["rate_history"]) == {
        "interval_seconds",
        "received_per_second",
        "published_per_second",
    }
    assert status["amqp"]["connected"] is True
    assert ":***@" in status["amqp"]["url"], "the AMQP password is masked"
    assert "guest:guest" not in str(status)
    crm = status["credentials"]["crm"]
    assert 500 < crm["expires_in_seconds"] <= 600, crm
    assert crm["expires_at"] > 0
