"""AMQP over TLS against a real TLS listener: a RabbitMQ node of the module's own, its server
certificate signed by a CA made here. ``BRIDGE_AMQP_CA_FILE`` makes the bridge trust it;
with another CA the connection is refused naming certificate verification, and retried with
backoff; a listener that requires a client certificate (``fail_if_no_peer_cert``) takes the
bridge's ``BRIDGE_AMQP_CERT_FILE``/``BRIDGE_AMQP_KEY_FILE`` and refuses it without them.

One node serves every case: listener 0 verifies a client certificate when one is sent,
listener 1 requires one.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from bridge.demo import DemoSource
from tests.e2e.conftest import bridge_env
from tests.e2e.harness import QueueCollector, running_bridge
from tests.e2e.inprocess import endpoint_up, eventually, running_supervisor
from tests.fixtures.rabbitmq import RabbitNode, TlsListener, rabbit_node, unique_name
from tests.integration.tls.pki import Issued, new_ca


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"
SERVER_AUTH = 0  # the node's listener that verifies a client certificate only when sent
MUTUAL = 1  # the node's listener that requires one
FAILED = "AMQP connection failed"  # the supervisor's log line for a refused attempt


@dataclass(frozen=True)
class Pki:
    ca: Path  # signed the broker's and the client's certificates
    other_ca: Path  # signed nothing the broker presents
    server: Issued
    client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("amqp-pki")
    ca = new_ca("bridge test CA", root)
    return Pki(
        ca=ca.file,
        other_ca=new_ca("another CA", root).file,
        server=ca.issue("127.0.0.1", root, server=True),
        client=ca.issue("bridge client", root, server=False),
    )


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RabbitNode]:
    """A dedicated node with two TLS listeners (see the module's docstring), stopped after
    the module."""
    listeners = [
        TlsListener(pki.ca, pki.server.cert, pki.server.key),
        TlsListener(pki.ca, pki.server.cert, pki.server.key, fail_if_no_peer_cert=True),
    ]
    with rabbit_node(tmp_path_factory.mktemp("tls-node"), tls=listeners) as node:
        yield node


@pytest.fixture
def exchange() -> str:
    return unique_name("tls")


@pytest.fixture
async def collector(tls_node: RabbitNode, exchange: str) -> AsyncIterator[QueueCollector]:
    """What reached the node's ``exchange``, read over its plain listener (the test's view,
    not the bridge's)."""
    c = QueueCollector()
    await c.start(exchange, url=tls_node.url)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def source() -> AsyncIterator[DemoSource]:
    async with DemoSource("127.0.0.1", 0, rate=0) as demo:
        yield demo


def endpoints(url: str, exchange: str) -> dict[str, Any]:
    return {
        "ep": {
            "url": url,
            "channels": [CHANNEL],
            "connection_types": "long-polling",
            "exchange": exchange,
        }
    }


def stamped(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """When each log line was written: the spacing of reconnect attempts is asserted."""
    event["at"] = time.monotonic()
    return event


async def refused_attempts(url: str, tmp_path: Path, count: int, **tls_files: str) -> list[Any]:
    """Run the supervisor on ``url`` with ``tls_files`` until ``count`` connection attempts
    were refused (bounded; it never connects, and /readyz says so); returns their log lines
    after checking that they were backed off: each retry waited at least half a second, and
    what it said it would (no hot loop)."""
    with structlog.testing.capture_logs(processors=[stamped]) as logs:
        # The endpoint is never reached: the bridge opens no endpoint without RabbitMQ.
        unreached = endpoints("http://127.0.0.1:9/cometd", unique_name("tls"))
        async with running_supervisor(url, tmp_path, unreached, **tls_files) as sup:
            await eventually(
                lambda: sum(e["event"] == FAILED for e in logs) >= count,
                30,
                f"{count} refused AMQP connects",
            )
            assert sup.ready() == (False, "AMQP connection down")
    assert not [e for e in logs if e["event"] == "AMQP connected"]
    attempts = [e for e in logs if e["event"] == FAILED]
    for before, after in itertools.pairwise(attempts):
        assert before["retry_in"] >= 0.5, before
        # retry_in is logged rounded to 0.1 s
        assert after["at"] - before["at"] >= before["retry_in"] - 0.05, (before, after)
    return attempts


async def test_the_daemon_publishes_over_tls_trusting_the_ca_file(
    tls_node: RabbitNode,
    pki: Pki,
    exchange: str,
    collector: QueueCollector,
    source: DemoSource,
    tmp_path: Path,
) -> None:
    env = bridge_env(
        tmp_path,
        endpoints(source.url, exchange),
        BRIDGE_AMQP_URL=tls_node.tls_url(SERVER_AUTH),
        BRIDGE_AMQP_CA_FILE=str(pki.ca),
    )
    async with running_bridge(env, tmp_path, clear_env=True) as bridge:
        await bridge.wait_status(lambda s: s["endpoints"]["ep"]["state"] == "streaming", 20)
        for _ in range(5):
            source.emit(CHANNEL)
        await collector.wait_for(5, within=20, what="events published over TLS")
        status = await bridge.status()
    assert status["amqp"]["connected"] is True
    assert status["amqp"]["url"].startswith("amqps://")


async def test_with_another_ca_the_broker_is_refused_naming_verification_with_backoff(
    tls_node: RabbitNode, pki: Pki, tmp_path: Path
) -> None:
    url = tls_node.tls_url(SERVER_AUTH)
    attempts = await refused_attempts(url, tmp_path, 3, BRIDGE_AMQP_CA_FILE=str(pki.other_ca))
    for attempt in attempts:
        assert "CERTIFICATE_VERIFY_FAILED" in attempt["error"], attempt
        assert "certificate verify failed" in attempt["error"], attempt
        assert "hint" not in attempt, attempt  # the error names the cause: no guess added


async def test_mutual_tls_publishes_with_the_client_certificate(
    tls_node: RabbitNode,
    pki: Pki,
    exchange: str,
    collector: QueueCollector,
    source: DemoSource,
    tmp_path: Path,
) -> None:
    async with running_supervisor(
        tls_node.tls_url(MUTUAL),
        tmp_path,
        endpoints(source.url, exchange),
        BRIDGE_AMQP_CA_FILE=str(pki.ca),
        BRIDGE_AMQP_CERT_FILE=str(pki.client.cert),
        BRIDGE_AMQP_KEY_FILE=str(pki.client.key),
    ) as sup:
        await endpoint_up(sup)
        for _ in range(5):
            source.emit(CHANNEL)
        await collector.wait_for(5, within=20, what="events published over mutual TLS")
        assert sup.ready() == (True, "ok")


async def test_mutual_tls_without_the_client_certificate_is_refused_with_backoff(
    tls_node: RabbitNode, pki: Pki, tmp_path: Path
) -> None:
    url = tls_node.tls_url(MUTUAL)
    attempts = await refused_attempts(url, tmp_path, 3, BRIDGE_AMQP_CA_FILE=str(pki.ca))
    for attempt in attempts:
        # TLS 1.3: the broker refuses after the client's handshake is done, with the alert
        # "certificate required"; the bridge has sent its AMQP header by then, and the reset
        # of the closed socket can discard that alert before it is read.
        error = attempt["error"]
        assert "CERTIFICATE_REQUIRED" in error or "Connection reset by peer" in error, attempt
        # So whichever reached the log, it says what to set.
        assert "BRIDGE_AMQP_CERT_FILE" in attempt.get("hint", ""), attempt
