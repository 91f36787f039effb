"""``check-config --connect`` against the real services: a token endpoint, a real CometD server
(cometd-nodejs-server), the shared RabbitMQ. One ok/FAIL line per check, exit 1 on a FAIL."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aio_pika.abc
import pytest

from tests.fixtures.rabbitmq import unique_name
from tests.fixtures.servers import NodeBayeuxServer
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    server = TokenServer(lifetime=600.0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def exchange(amqp_connection: aio_pika.abc.AbstractRobustConnection) -> AsyncIterator[str]:
    """An exchange that exists (deleted at the end)."""
    name = unique_name("check-config")
    channel = await amqp_connection.channel()
    declared = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, auto_delete=False)
    try:
        yield name
    finally:
        await declared.delete()
        await channel.close()


async def check_connect(env: dict[str, str]) -> tuple[int, list[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bridge", "check-config", "--connect", "--timeout", "10"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    lines = out.decode().splitlines()
    # The JSON configuration comes first; the checks start after this line.
    assert "connecting with these settings:" in lines, out.decode() + err.decode()
    return process.returncode, lines[lines.index("connecting with these settings:") + 1 :]


def endpoint(server: NodeBayeuxServer, exchange: str, tokens: TokenServer) -> dict[str, object]:
    return {
        "url": server.url,
        "channels": ["/check/config"],
        "connection_types": ["long-polling"],
        "exchange": exchange,
        "auth": {
            "kind": "oauth2_client_credentials",
            "token_url": tokens.token_url,
            "client_id": tokens.client_id,
            "client_secret": tokens.client_secret,
        },
    }


async def test_every_check_passes_against_working_services(
    cometd_server: NodeBayeuxServer,
    token_server: TokenServer,
    exchange: str,
    amqp_url: str,
    tmp_path: Path,
) -> None:
    env = {
        "BRIDGE_ENDPOINTS": json.dumps({"orders": endpoint(cometd_server, exchange, token_server)}),
        "BRIDGE_AMQP_URL": amqp_url,
        "BRIDGE_CONTROL_EXCHANGE": exchange,
        "BRIDGE_STATE_DIR": str(tmp_path / "state"),
    }
    before = await cometd_server.stats()
    code, lines = await check_connect(env)
    text = "\n".join(lines)
    assert code == 0, text
    assert lines[0].startswith("ok   endpoint orders token: credential orders"), text
    assert lines[1].startswith(f"ok   endpoint orders handshake: {cometd_server.url}"), text
    assert lines[2].startswith("ok   rabbitmq: "), text
    assert lines[3] == f"ok   exchange {exchange}: exists", text
    assert lines[-1] == "all checks passed"
    assert token_server.by_grant == {"client_credentials": 1}
    # The session was ended with /meta/disconnect: none is left on the server.
    after = await cometd_server.stats()
    assert after["sessions"] == 0, after
    assert after["subscriptions"] == before["subscriptions"], after
    assert token_server.client_secret not in text


async def test_a_bad_url_and_a_refused_token_are_fail_lines_and_exit_1(
    cometd_server: NodeBayeuxServer,
    token_server: TokenServer,
    exchange: str,
    amqp_url: str,
    tmp_path: Path,
) -> None:
    good = endpoint(cometd_server, exchange, token_server)
    # Nothing listens on port 1.
    unreachable = {**good, "url": "http://127.0.0.1:1/cometd", "auth": {"kind": "none"}}
    refused = {**good, "auth": {**good["auth"], "client_id": "someone-else"}}  # type: ignore[dict-item]
    token_server.fail_with(401, "invalid_client", times=None)
    missing_exchange = unique_name("absent")
    env = {
        "BRIDGE_ENDPOINTS": json.dumps(
            {
                "unreachable": unreachable,
                "refused": refused,
                "absent": {**unreachable, "exchange": missing_exchange},
            }
        ),
        "BRIDGE_AMQP_URL": amqp_url,
        "BRIDGE_CONTROL_EXCHANGE": exchange,
        "BRIDGE_STATE_DIR": str(tmp_path / "state"),
    }
    code, lines = await check_connect(env)
    text = "\n".join(lines)
    assert code == 1, text
    by_check = {line[5:].split(":", 1)[0]: line for line in lines if line[:4].strip()}
    assert by_check["endpoint unreachable handshake"].startswith("FAIL"), text
    assert "127.0.0.1:1" in by_check["endpoint unreachable handshake"], text
    assert by_check["endpoint refused token"].startswith("FAIL"), text
    assert "invalid_client" in by_check["endpoint refused token"], text
    # The broker checks still run after endpoint failures.
    assert by_check["rabbitmq"].startswith("ok"), text
    assert by_check[f"exchange {missing_exchange}"].startswith("warn"), text
    assert lines[-1] == "3 check(s) failed", text
