"""The supervisor in-process: Salesforce URL derivation and quota refusals.

These run :class:`bridge.supervisor.Supervisor` in the test's loop (real RabbitMQ, real HTTP
to in-process Bayeux servers) so the test can read its metrics registry directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.demo import DemoSource
from bridge.settings import load_settings
from bridge.supervisor import Supervisor
from tests.e2e.harness import QueueCollector
from tests.fakes.fake_bayeux import FakeBayeux, fail_reply, handshake_denied
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def running_supervisor(
    amqp_url: str, tmp_path: Path, endpoints: dict[str, Any]
) -> AsyncIterator[Supervisor]:
    settings = load_settings(
        {
            "BRIDGE_AMQP_URL": amqp_url,
            "BRIDGE_ENDPOINTS": json.dumps(endpoints),
            "BRIDGE_HTTP_HOST": "127.0.0.1",
            "BRIDGE_HTTP_PORT": "0",
            "BRIDGE_STATE_DIR": str(tmp_path / "state"),
            "BRIDGE_SHUTDOWN_TIMEOUT": "5",
        }
    )
    supervisor = Supervisor(settings)
    task = asyncio.create_task(supervisor.run())
    try:
        yield supervisor
    finally:
        supervisor.stop()
        async with asyncio.timeout(30):
            unconfirmed = await task
    # run() returns how many received messages were left unconfirmed at exit: none here.
    assert unconfirmed == 0, f"{unconfirmed} messages left unconfirmed at shutdown"


async def eventually(check: Callable[[], bool], within: float) -> None:
    """Wait (bounded) for a condition on in-process state that has no event of its own."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - metrics and worker state have no notification
            await asyncio.sleep(0.05)


async def test_salesforce_url_comes_from_the_token_response(
    amqp_url: str, exchange_name: str, collector: QueueCollector, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    async with DemoSource("127.0.0.1", 0, rate=0, path="/cometd/61.0") as source:
        tokens = TokenServer(jwt_public_key=key.public_key(), instance_url=source.url[:-12])
        await tokens.start()
        try:
            endpoint = {
                "channels": ["/event/Order__e"],
                "connection_types": "long-polling",
                "exchange": exchange_name,
                "api_version": "61.0",
                "auth": {
                    "kind": "salesforce_jwt",
                    "login_url": tokens.url,
                    "client_id": tokens.client_id,
                    "username": tokens.jwt_username,
                    "private_key": pem,
                },
            }
            async with running_supervisor(amqp_url, tmp_path, {"sf": endpoint}) as sup:
                await eventually(lambda: sup.workers.get("sf") is not None, 10)
                worker = sup.workers["sf"]
                await eventually(lambda: worker.up, 15)
                assert worker.url == f"{source.url[:-12]}/cometd/61.0"
                for _ in range(5):
                    source.emit("/event/Order__e")
                await collector.wait_for(5, within=15)
        finally:
            await tokens.stop()
    assert len(collector.deliveries) == 5
    assert tokens.by_grant.get("urn:ietf:params:oauth:grant-type:jwt-bearer", 0) >= 1


async def test_a_quota_refusal_backs_off_for_minutes_and_is_counted(
    amqp_url: str, fake_bayeux: FakeBayeux, exchange_name: str, tmp_path: Path
) -> None:
    fake_bayeux.on("/meta/handshake", handshake_denied())
    endpoint = {
        "url": fake_bayeux.url,
        "channels": ["/event/Order__e"],
        "connection_types": "long-polling",
        "exchange": exchange_name,
    }
    with structlog.testing.capture_logs() as logs:
        async with running_supervisor(amqp_url, tmp_path, {"sf": endpoint}) as sup:
            registry = sup.metrics.registry
            sample = "cometd_bridge_auth_limit_errors_total"
            labels = {"endpoint": "sf", "limit": "concurrent_clients"}
            await eventually(lambda: (registry.get_sample_value(sample, labels) or 0) >= 1, 15)
            first = fake_bayeux.count("/meta/handshake")
            status = sup.status()["endpoints"]["sf"]
            assert "limit" in (status["last_error"] or "")
            assert registry.get_sample_value(sample, labels) == 1
    # The next attempt was scheduled minutes away (a quick retry only burns more quota), and
    # none happened before the test stopped the bridge.
    [refusal] = [e for e in logs if "quota/limit is exhausted" in e["event"]]
    assert refusal["limit"] == "concurrent_clients"
    assert refusal["retry_in"] >= 60, f"retry in {refusal['retry_in']} s, not minutes"
    assert fake_bayeux.count("/meta/handshake") == first, "no handshake storm"


async def test_a_session_lost_to_an_expired_token_is_counted_as_a_possible_gap(
    amqp_url: str, fake_bayeux: FakeBayeux, exchange_name: str, tmp_path: Path
) -> None:
    # Salesforce semantics: an expired token ends the session ("401::Authentication invalid",
    # reconnect none). The bridge re-authenticates and re-handshakes; on a server without
    # replay, whatever it had queued for the old session may be gone: counted, not hidden.
    endpoint = {
        "url": fake_bayeux.url,
        "channels": ["/event/Order__e"],
        "connection_types": "long-polling",
        "exchange": exchange_name,
        "auth": {"kind": "bearer", "token": "t0k3n"},
    }
    async with running_supervisor(amqp_url, tmp_path, {"sf": endpoint}) as sup:
        await eventually(lambda: sup.workers.get("sf") is not None, 10)
        worker = sup.workers["sf"]
        await eventually(lambda: worker.up, 15)
        handshakes = fake_bayeux.count("/meta/handshake")
        fake_bayeux.on(
            "/meta/connect", fail_reply("401::Authentication invalid", reconnect="none"), times=1
        )
        registry = sup.metrics.registry
        sample = "cometd_bridge_possible_gaps_total"
        labels = {"endpoint": "sf", "reason": "session_lost"}
        await eventually(lambda: (registry.get_sample_value(sample, labels) or 0) >= 1, 15)
        await eventually(lambda: fake_bayeux.count("/meta/handshake") > handshakes, 15)
        reconnects = registry.get_sample_value(
            "cometd_bridge_reconnects_total", {"endpoint": "sf", "reason": "auth"}
        )
        assert reconnects == 1
