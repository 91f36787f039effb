"""Fixtures of the fault tests: fault proxies in front of real servers and of RabbitMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import collector, exchange_name  # noqa: F401 (fixtures)
from tests.faults.proxy import FaultProxy, Framing
from tests.integration.noloss.conftest import salesforce_factory  # noqa: F401 (the fixture)


ProxyFactory = Callable[..., Awaitable[FaultProxy]]


@pytest.fixture
async def fault_proxy_factory() -> AsyncIterator[ProxyFactory]:
    """``await factory(url_or_host_port, framing=...)``: a started proxy, closed at teardown."""
    started: list[FaultProxy] = []

    async def factory(target: str, *, framing: Framing = "http") -> FaultProxy:
        parts = urlsplit(target if "//" in target else f"tcp://{target}")
        proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 80, framing=framing)
        started.append(proxy)
        return await proxy.start()

    try:
        yield factory
    finally:
        for proxy in started:
            await proxy.close()
