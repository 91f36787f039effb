"""Secrets never reach what the bridge prints: ``check-config`` output, a real run's log lines,
``/status`` and ``/metrics``; configuration mistakes are exit 2 with the variable named.

Every secret is a distinct marker string, placed where operators put secrets: a query string of
the CometD URL and of the token URL, a configured header, the client secret, an AMQP password
containing ``@``, and the access tokens the (real) token endpoint issues.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.demo.source import DemoSource
from tests.e2e.conftest import bridge_env
from tests.e2e.harness import BridgeProcess, QueueCollector, running_bridge
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration

QUERY_SECRET = "qs-S3CRET-access-token"
HEADER_SECRET = "hdr-S3CRET-api-key"
SIG_SECRET = "sig-S3CRET-signature"
AMQP_SECRET = "ss-S3CRET-amqp"  # the part after the "@" inside the password
CHANNEL = "/event/Order__e"


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config"],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def endpoint(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": f"{url}?access_token={QUERY_SECRET}&api=61",
        "channels": [CHANNEL],
        "connection_types": "long-polling",
        "headers": {"X-Api-Key": HEADER_SECRET, "X-Trace": f"trace;sig={SIG_SECRET}"},
        **extra,
    }


def oauth(token_server: TokenServer, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "oauth2_client_credentials",
        "token_url": f"{token_server.token_url}?sig={SIG_SECRET}",
        "client_id": token_server.client_id,
        "client_secret": token_server.client_secret,
        **extra,
    }


def assert_absent(text: str, secrets: list[str], where: str) -> None:
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"{where} shows {leaked}"


def test_check_config_hides_every_secret() -> None:
    token_server = TokenServer(client_secret="cs-S3CRET-client")
    token_server.url = "https://auth.example.com"
    env = {
        "BRIDGE_ENDPOINTS": json.dumps(
            {"src": endpoint("https://cometd.example.com/cometd", auth=oauth(token_server))}
        ),
        "BRIDGE_AMQP_URL": f"amqp://bridge:p@{AMQP_SECRET}@rabbit:5672/",
    }
    done = check_config(env)
    assert done.returncode == 0, done.stderr
    secrets = [QUERY_SECRET, HEADER_SECRET, SIG_SECRET, AMQP_SECRET, "cs-S3CRET-client"]
    assert_absent(done.stdout + done.stderr, secrets, "check-config")
    shown = json.loads(done.stdout)
    assert shown["amqp_url"] == "amqp://bridge:***@rabbit:5672/"
    src = shown["endpoints"]["src"]
    assert src["url"] == "https://cometd.example.com/cometd?access_token=***&api=61"
    assert src["headers"] == {"X-Api-Key": "***", "X-Trace": "***"}


@pytest.mark.parametrize(
    ("change", "variable", "needle"),
    [
        ({"headers": {"X-Api-Key": f"{HEADER_SECRET}\r\nX-Evil: 1"}}, "BRIDGE_ENDPOINTS", "CR, LF"),
        ({"replay": "stored", "channels": ["/event/*"]}, "BRIDGE_ENDPOINTS", "wildcard"),
        (
            {
                "url": None,
                "auth": {
                    "kind": "salesforce_jwt",
                    "client_id": "c",
                    "username": "u@example.com",
                    "private_key": f"-----BEGIN PRIVATE KEY-----\n{HEADER_SECRET}\n"
                    "-----END PRIVATE KEY-----",
                },
            },
            "BRIDGE_ENDPOINTS",
            "private_key",
        ),
    ],
    ids=["crlf-header", "replay-wildcard", "bad-private-key"],
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_configuration_mistakes_exit_2_naming_the_variable(
    command: str, change: dict[str, Any], variable: str, needle: str
) -> None:
    ep = endpoint("https://cometd.example.com/cometd") | change
    if ep["url"] is None:
        del ep["url"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "bridge", command],
        env=base | {"BRIDGE_ENDPOINTS": json.dumps({"src": ep}), "BRIDGE_HTTP_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"{variable}:" in done.stderr
    assert needle in done.stderr
    assert_absent(done.stdout + done.stderr, [HEADER_SECRET, QUERY_SECRET], command)


async def test_a_real_run_never_shows_a_secret(
    amqp_url: str, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    token_server = TokenServer(client_secret="cs-S3CRET-client", lifetime=600.0)
    # A lifetime the bridge must replace (a warning naming the token URL) and one refused
    # grant (a warning with the endpoint's error): log lines that carry the URLs.
    token_server.expires_in = 0
    token_server.fail_with(401, "invalid_client", times=1)
    await token_server.start()
    try:
        async with DemoSource("127.0.0.1", 0, rate=0, channels=[CHANNEL]) as source:
            auth = oauth(token_server, min_token_interval=0.2)
            ep = endpoint(source.url, exchange=exchange_name, auth=auth)
            env = bridge_env(tmp_path, {"src": ep}, BRIDGE_AMQP_URL=amqp_url)
            async with running_bridge(env, tmp_path, clear_env=True) as bridge:
                for _ in range(5):
                    source.emit(CHANNEL)
                await collector.wait_for(5, within=30)
                _, status = await bridge.get("/status")
                _, metrics = await bridge.get("/metrics")
                bridge.signal(signal.SIGTERM)
                assert await bridge.wait_exit() == 0
                log = bridge.log_path.read_text()
    finally:
        await token_server.stop()

    # The faults were hit: the refused grant, then the replaced lifetime, then a token.
    assert token_server.requests >= 2
    assert "invalid_client" in log
    assert "expires_in=0" in log
    assert token_server.issued, "no token was issued"
    secrets = [
        QUERY_SECRET,
        HEADER_SECRET,
        SIG_SECRET,
        token_server.client_secret,
        *(issued.token for issued in token_server.issued),
    ]
    assert_absent(log, secrets, "the log")
    assert_absent(status, secrets, "/status")
    assert_absent(metrics, secrets, "/metrics")
    assert "access_token=***" in status


async def test_amqp_password_with_at_never_shown(tmp_path: Path, amqp_url: str) -> None:
    """A wrong password containing "@": the broker refuses it and the bridge logs the failure,
    never the part of the password after the "@"."""
    env = bridge_env(
        tmp_path,
        {"src": endpoint("http://127.0.0.1:9/cometd")},
        BRIDGE_AMQP_URL=f"amqp://guest:p@{AMQP_SECRET}@127.0.0.1:5672/",
    )
    bridge = BridgeProcess(env=env, log_path=tmp_path / "bridge.log", clear_env=True)
    bridge.start()
    try:
        deadline = time.monotonic() + 30
        # Another process: nothing to await but its log.
        while not any(e.get("level") in ("warning", "error") for e in bridge.log_events()):
            assert time.monotonic() < deadline, f"no warning logged:\n{bridge.log_tail()}"
            await asyncio.sleep(0.2)
    finally:
        bridge.stop()
    log = bridge.log_path.read_text()
    assert_absent(log, [AMQP_SECRET, QUERY_SECRET, HEADER_SECRET], "the log")
