"""The supervisor in-process: Salesforce URL derivation and quota refusals.

These run :class:`bridge.supervisor.Supervisor` in the test's loop (real RabbitMQ, real HTTP
to in-process Bayeux servers) so the test can read its metrics registry directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.demo import DemoSource
from tests.e2e.harness import QueueCollector
from tests.e2e.inprocess import endpoint_up, eventually, metric, running_supervisor
from tests.fakes.fake_bayeux import FakeBayeux, fail_reply, handshake_denied
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration


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
                worker = await endpoint_up(sup, "sf", within=25)
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
            labels = {"endpoint": "sf", "limit": "concurrent_clients"}
            limit_errors = "cometd_bridge_auth_limit_errors_total"
            await eventually(
                lambda: metric(sup, limit_errors, **labels) >= 1, 15, "the refusal counted"
            )
            first = fake_bayeux.count("/meta/handshake")
            status = sup.status()["endpoints"]["sf"]
            assert "limit" in (status["last_error"] or "")
            assert metric(sup, limit_errors, **labels) == 1
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
        await endpoint_up(sup, "sf", within=25)
        handshakes = fake_bayeux.count("/meta/handshake")
        fake_bayeux.on(
            "/meta/connect", fail_reply("401::Authentication invalid", reconnect="none"), times=1
        )
        gaps = "cometd_bridge_possible_gaps_total"
        await eventually(
            lambda: metric(sup, gaps, endpoint="sf", reason="session_lost") >= 1,
            15,
            "the lost session counted as a possible gap",
        )
        await eventually(
            lambda: fake_bayeux.count("/meta/handshake") > handshakes, 15, "a new handshake"
        )
        reconnects = metric(sup, "cometd_bridge_reconnects_total", endpoint="sf", reason="auth")
        assert reconnects == 1
