"""HTTP surface, served by a real aiohttp server on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from bridge.http import ReadyCheck, StatusSource, bound_port, start_http_server
from bridge.metrics import Metrics


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start servers on 127.0.0.1:0; returns (base URL, registry); all stopped afterwards."""
    runners: list[web.AppRunner] = []

    async def start(
        ready: ReadyCheck | None = None, status: StatusSource | None = None
    ) -> tuple[str, CollectorRegistry]:
        registry = CollectorRegistry()
        Metrics(registry, version="9.9.9").endpoint("orders").received.inc(3)
        runner = await start_http_server("127.0.0.1", 0, registry, ready=ready, status=status)
        runners.append(runner)
        return f"http://127.0.0.1:{bound_port(runner)}", registry

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def test_metrics(serve: Callable[..., Any], client: aiohttp.ClientSession) -> None:
    base, _ = await serve()
    async with client.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert 'cometd_bridge_messages_received_total{endpoint="orders"} 3.0' in text
    assert 'version="9.9.9"' in text
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with client.get(f"{base}/metrics", headers=headers) as resp:
        assert resp.content_type == "application/openmetrics-text"
        assert (await resp.text()).endswith("# EOF\n")


async def test_healthz(serve: Callable[..., Any], client: aiohttp.ClientSession) -> None:
    base, _ = await serve()
    async with client.get(f"{base}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_readyz_follows_the_check(
    serve: Callable[..., Any], client: aiohttp.ClientSession
) -> None:
    state: dict[str, Any] = {"ready": (False, "amqp not connected")}
    base, _ = await serve(ready=lambda: state["ready"])
    async with client.get(f"{base}/readyz") as resp:
        assert resp.status == 503
        assert await resp.json() == {"status": "not ready", "reason": "amqp not connected"}
    state["ready"] = True
    async with client.get(f"{base}/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ready"}
    state["ready"] = False
    async with client.get(f"{base}/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["reason"] == "not ready"


async def test_readyz_without_a_check_or_with_a_broken_one(
    serve: Callable[..., Any], client: aiohttp.ClientSession
) -> None:
    def broken() -> bool:
        raise RuntimeError("supervisor gone")

    for check in (None, broken):
        base, _ = await serve(ready=check)
        async with client.get(f"{base}/readyz") as resp:
            assert resp.status == 503
            assert "reason" in await resp.json()


async def test_status(serve: Callable[..., Any], client: aiohttp.ClientSession) -> None:
    def status() -> Mapping[str, Any]:
        return {"endpoints": {"orders": {"state": "connected", "pending": 2}}, "since": 1.5}

    base, _ = await serve(status=status)
    async with client.get(f"{base}/status") as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "endpoints": {"orders": {"state": "connected", "pending": 2}},
            "since": 1.5,
        }
    bare, _ = await serve()
    async with client.get(f"{bare}/status") as resp:
        assert await resp.json() == {}


async def test_status_is_redacted(serve: Callable[..., Any], client: aiohttp.ClientSession) -> None:
    secret = "pw-0123456789"

    def status() -> Mapping[str, Any]:
        return {
            "orders": {
                "last_error": f"cannot connect to amqp://bridge:{secret}@rabbit/",
                "auth": {"access_token": secret},
            }
        }

    base, _ = await serve(status=status)
    async with client.get(f"{base}/status") as resp:
        text = await resp.text()
    assert secret not in text
    assert "amqp://bridge:***@rabbit/" in text


async def test_port_in_use_raises_and_cleans_up(serve: Callable[..., Any]) -> None:
    base, _ = await serve()
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="in use"):
        await start_http_server("127.0.0.1", port, CollectorRegistry())
