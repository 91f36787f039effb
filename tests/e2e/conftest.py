"""End-to-end fixtures: a test consumer queue in RabbitMQ, a Salesforce-like server, and
endpoint configuration helpers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.harness import QueueCollector
from tests.fixtures.rabbitmq import unique_name
from tests.integration.noloss.conftest import (
    SalesforceFactory,
    SalesforceServer,
    salesforce_factory,  # noqa: F401 (the fixture)
)


@pytest.fixture
def exchange_name() -> str:
    return unique_name("e2e")


@pytest.fixture
async def collector(amqp_url: str, exchange_name: str) -> AsyncIterator[QueueCollector]:
    """A queue bound with ``#`` to the test's exchange, recording every delivery."""
    c = QueueCollector()
    await c.start(exchange_name)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def sf_server(request: pytest.FixtureRequest) -> SalesforceServer:
    """A Salesforce-like server: replay on, no ack, 2 s reconnect budget (stopped at teardown
    by ``salesforce_factory``)."""
    factory: SalesforceFactory = request.getfixturevalue("salesforce_factory")
    return factory()


def bridge_env(tmp_path: Any, endpoints: dict[str, dict[str, Any]], **extra: str) -> dict[str, str]:
    env = {
        "BRIDGE_ENDPOINTS": json.dumps(endpoints),
        "BRIDGE_STATE_DIR": str(tmp_path / "state"),
        "BRIDGE_SHUTDOWN_TIMEOUT": "10",
        "BRIDGE_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env
