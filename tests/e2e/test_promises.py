"""README promises checked against a running bridge process (``python -m bridge run``).

Each test attacks one promise: the metrics a running bridge reports, shutdown past its
deadline, endpoint restarts, secrets never shown, replay positions across re-handshakes, the
ack extension, wildcard channels, endpoint headers, the byte bound of the buffer and the
daemon's ``connection_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from tests.e2e.conftest import bridge_env
from tests.e2e.harness import AMQP_URL, BridgeProcess, QueueCollector, running_bridge
from tests.e2e.test_noloss_faults import (
    CHANNEL,
    WAIT,
    check_complete,
    pausable_proxy,
    sample,
    sf_env,
    wait_sample,
    wait_seqs,
)
from tests.fakes.fake_bayeux import FakeBayeux, fail_reply
from tests.fixtures.servers import NodeBayeuxServer
from tests.integration.noloss.conftest import (
    SalesforceFactory,
    SalesforceServer,
    salesforce_factory,  # noqa: F401 (the fixture)
)


pytestmark = pytest.mark.integration

FAKE_CHANNEL = "/orders/created"


def fake_endpoint(url: str, exchange: str, **fields: Any) -> dict[str, Any]:
    return {
        "url": url,
        "channels": [FAKE_CHANNEL],
        "connection_types": "long-polling",
        "exchange": exchange,
        **fields,
    }


def proxied(env: dict[str, str], port: int) -> dict[str, str]:
    """``env`` with the bridge's AMQP connection through the test proxy on ``port``."""
    user_and_host = AMQP_URL.split("//", 1)[1]
    credentials = user_and_host.split("@", 1)[0]
    return {**env, "BRIDGE_AMQP_URL": f"amqp://{credentials}@127.0.0.1:{port}/"}


async def wait_metric_at_most(
    bridge: BridgeProcess, name: str, value: float, within: float = WAIT, **labels: str
) -> float:
    """Poll /metrics (another process) until ``name`` drops to ``value`` or below."""
    deadline = time.monotonic() + within
    current = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            current = sample(await bridge.metrics(), name, **labels)
            if current is not None and current <= value:
                return current
        await asyncio.sleep(0.1)  # another process: polling is all there is
    raise AssertionError(f"{name}{labels} = {current}, expected <= {value} within {within}s")


async def wait_log(
    bridge: BridgeProcess, match: Callable[[dict[str, Any]], bool], what: str, count: int = 1
) -> list[dict[str, Any]]:
    """Poll the bridge's JSON log until ``count`` lines match; fail naming ``what``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = [e for e in bridge.log_events() if match(e)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)  # a log file: nothing to await
    raise AssertionError(f"{what}: not logged {count} times within {WAIT}s\n{bridge.log_tail()}")


# -- metrics a running bridge reports -----------------------------------------------------------


async def test_level_gauges_and_publish_latency_as_a_running_bridge_reports_them(
    fake_bayeux: FakeBayeux, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    endpoint = fake_endpoint(fake_bayeux.url, exchange_name)
    async with pausable_proxy() as proxy:
        env = proxied(bridge_env(tmp_path, {"src": endpoint}), proxy.port)
        async with running_bridge(env, tmp_path) as bridge:
            for seq in range(1, 101):
                fake_bayeux.publish(FAKE_CHANNEL, {"seq": seq})
            await collector.wait_for(100, within=WAIT)
            await wait_metric_at_most(bridge, "cometd_bridge_pending_messages", 0, endpoint="src")
            metrics = await bridge.metrics()
            # One latency observation per confirmed message, each a positive duration.
            latency_count = sample(
                metrics, "cometd_bridge_publish_latency_seconds_count", endpoint="src"
            )
            latency_sum = sample(
                metrics, "cometd_bridge_publish_latency_seconds_sum", endpoint="src"
            )
            assert latency_count == 100, latency_count
            assert latency_sum is not None
            assert 0 < latency_sum < 100 * WAIT, latency_sum
            assert sample(metrics, "cometd_bridge_inflight_messages", endpoint="src") == 0

            # The broker stops confirming: what was received waits, in flight and pending.
            proxy.hold_publishes()
            for seq in range(101, 131):
                fake_bayeux.publish(FAKE_CHANNEL, {"seq": seq})
            await wait_sample(bridge, "cometd_bridge_pending_messages", 30, endpoint="src")
            await wait_sample(bridge, "cometd_bridge_inflight_messages", 1, endpoint="src")
            held = await bridge.metrics()
            assert sample(held, "cometd_bridge_pending_messages", endpoint="src") == 30
            inflight = sample(held, "cometd_bridge_inflight_messages", endpoint="src")
            assert inflight is not None
            assert 1 <= inflight <= 30, inflight
            published = sample(held, "cometd_bridge_messages_published_total", endpoint="src")
            assert published == 100, "nothing confirmed while held"
    assert {d.body["seq"] for d in collector.deliveries} >= set(range(1, 101))


# -- shutdown past its deadline ---------------------------------------------------------------


async def test_sigterm_with_the_broker_away_past_the_deadline_reports_the_unconfirmed_count(
    fake_bayeux: FakeBayeux, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    endpoint = fake_endpoint(fake_bayeux.url, exchange_name)
    async with pausable_proxy() as proxy:
        env = proxied(
            bridge_env(tmp_path, {"src": endpoint}, BRIDGE_SHUTDOWN_TIMEOUT="3"), proxy.port
        )
        async with running_bridge(env, tmp_path) as bridge:
            for seq in range(1, 21):
                fake_bayeux.publish(FAKE_CHANNEL, {"seq": seq})
            await collector.wait_for(20, within=WAIT)
            await wait_sample(bridge, "cometd_bridge_messages_published_total", 20, endpoint="src")
            proxy.pause()  # the broker is away and stays away through the shutdown
            for seq in range(21, 51):
                fake_bayeux.publish(FAKE_CHANNEL, {"seq": seq})
            await wait_sample(bridge, "cometd_bridge_pending_messages", 30, endpoint="src")
            started = time.monotonic()
            bridge.signal(signal.SIGTERM)
            code = await bridge.wait_exit(within=WAIT)
            took = time.monotonic() - started
    totals = bridge.final_totals()["src"]
    [deadline] = [
        e for e in bridge.log_events() if e["event"].startswith("shutdown deadline reached")
    ]
    assert totals == {"received": 50, "confirmed": 20}, totals
    assert deadline["unconfirmed"] == 30, deadline
    assert code != 0, "an exit with messages left unconfirmed is not a clean exit"
    # Bounded by the deadline (3 s), not by the broker: generous slack for a loaded machine.
    assert took < WAIT / 2, f"shutdown took {took:.1f}s with a 3 s deadline"


# -- an endpoint that crashes while running -----------------------------------------------------


async def test_an_endpoint_that_fails_while_running_restarts_with_jittered_backoff(
    fake_bayeux: FakeBayeux, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    endpoint = fake_endpoint(fake_bayeux.url, exchange_name)
    async with running_bridge(bridge_env(tmp_path, {"src": endpoint}), tmp_path) as bridge:
        fake_bayeux.publish(FAKE_CHANNEL, {"seq": 1})
        await collector.wait_for(1, within=WAIT)
        # The server ends the session for good three times in a row ("reconnect: none"):
        # each time the endpoint's session dies and the endpoint starts a new one.
        fake_bayeux.on(
            "/meta/connect",
            fail_reply("500::session ended by the test", reconnect="none"),
            nth=fake_bayeux.count("/meta/connect") + 1,
            times=3,
        )
        fake_bayeux.publish(FAKE_CHANNEL, {"seq": 2})  # releases the held connect
        restarts = await wait_log(
            bridge, lambda e: e["event"] == "restarting endpoint session", "3 restarts", 3
        )
        await bridge.wait_status(lambda s: s["endpoints"]["src"]["up"], within=WAIT)
        fake_bayeux.publish(FAKE_CHANNEL, {"seq": 3})
        await collector.wait_for(3, within=WAIT)
        status = await bridge.status()
    assert status["endpoints"]["src"]["restarts"] == 3
    delays = [e["delay"] for e in restarts[:3]]
    # Jittered, capped exponential: the k-th restart waits uniform(0, 0.5 * 2**k) seconds.
    for k, delay in enumerate(delays):
        assert 0 <= delay <= 0.5 * 2**k, delays
    # Without jitter each delay would be the full step (0.5, 1, 2 s): restarts of many
    # bridges would line up.
    assert any(abs(d - 0.5 * 2**k) > 0.01 for k, d in enumerate(delays)), f"no jitter: {delays}"
    assert {d.body["seq"] for d in collector.deliveries} >= {1, 3}, "streaming resumed"


# -- secrets, token refresh and the rotated refresh token ---------------------------------------


@pytest.fixture
async def token_server() -> AsyncIterator[Any]:
    from tests.integration.auth.token_server import TokenServer

    server = TokenServer(lifetime=5.0, rotate_refresh_tokens=True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_rotated_refresh_token_survives_a_restart_and_secrets_never_show(
    fake_bayeux: FakeBayeux,
    token_server: Any,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
) -> None:
    configured = token_server.refresh_token
    endpoint = fake_endpoint(
        fake_bayeux.url,
        exchange_name,
        auth={
            "kind": "oauth2_refresh_token",
            "token_url": token_server.token_url,
            "client_id": token_server.client_id,
            "client_secret": token_server.client_secret,
            "refresh_token": configured,
            "name": "crm",
            # The default floor between token requests (30 s) would outlast these tokens.
            "min_token_interval": 1.0,
        },
    )
    env = bridge_env(tmp_path, {"src": endpoint})
    secrets = {configured, token_server.client_secret, "guest:guest"}
    async with running_bridge(env, tmp_path) as first:
        fake_bayeux.publish(FAKE_CHANNEL, {"seq": 1})
        await collector.wait_for(1, within=WAIT)
        # Tokens live 5 s and are refreshed before they expire: at least one timer refresh.
        await wait_sample(
            first, "cometd_bridge_token_refreshes_total", 2, credential="crm", result="success"
        )
        metrics_text = (await first.get("/metrics"))[1]
        status_text = (await first.get("/status"))[1]
        issued = [i.token for i in token_server.issued]
    assert not token_server.refresh_token_valid(configured), "the server rotated it"
    assert len(issued) >= 2
    # Secrets (configured and issued) appear nowhere an operator looks.
    shown = {"log": first.log_path.read_text(), "/metrics": metrics_text, "/status": status_text}
    for where, text in shown.items():
        for secret in [*secrets, *issued]:
            assert secret not in text, f"a secret ({secret[:4]}…) shows in {where}"
    stored = list((tmp_path / "state").iterdir())
    assert stored, "the rotated refresh token is kept in BRIDGE_STATE_DIR"

    # Restarted with the same configuration (whose refresh token is revoked now): it uses the
    # rotated one from BRIDGE_STATE_DIR and streams.
    async with running_bridge(env, tmp_path) as second:
        fake_bayeux.publish(FAKE_CHANNEL, {"seq": 2})
        await collector.wait_for(2, within=WAIT)
        metrics = await second.metrics()
    assert (sample(metrics, "cometd_bridge_token_refreshes_total", result="success") or 0) >= 1
    assert not sample(metrics, "cometd_bridge_token_refreshes_total", result="failure")
    assert configured not in second.log_path.read_text()


# -- replay: all keeps its positions across re-handshakes ---------------------------------------


@pytest.mark.parametrize("replay", ["all", "new"])
async def test_replay_new_or_all_resumes_from_memory_after_a_lost_session(
    request: pytest.FixtureRequest,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    replay: str,
) -> None:
    factory: SalesforceFactory = request.getfixturevalue("salesforce_factory")
    server: SalesforceServer = factory()
    if replay == "all":
        await server.publish(CHANNEL, 10)  # retained before the start: replayed by "all"
    env = sf_env(tmp_path, server, exchange_name, replay=replay)
    async with running_bridge(env, tmp_path) as bridge:
        if replay == "new":
            await server.publish(CHANNEL, 10)
        await wait_seqs(collector, 10)
        assert await server.drop_sessions() == 1
        await server.publish(CHANNEL, 10)  # seqs 11..20, while the session is being replaced
        await wait_seqs(collector, 20)
        stats = await server.stats()
        metrics = await bridge.metrics()
    assert (sample(metrics, "cometd_bridge_handshakes_total", result="success") or 0) >= 2
    subscribes = [s for s in stats["subscribes"] if s["valid"]]
    assert subscribes[0]["replay"] == (-2 if replay == "all" else -1)
    # The re-subscription starts from the last id it received (kept in memory), not from
    # the option again: -2 would replay everything twice, -1 would lose 11..20.
    last_before = 1000 + 10 - 1
    assert subscribes[-1]["replay"] == last_before, subscribes
    assert check_complete(collector, 20, record_property) == 0, "0 duplicates"


# -- ack: auto against a server offering the extension ------------------------------------------


async def test_ack_auto_uses_the_extension_when_the_server_offers_it(
    request: pytest.FixtureRequest,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    factory: SalesforceFactory = request.getfixturevalue("salesforce_factory")
    server = factory(ack=1, replay=0)
    env = sf_env(tmp_path, server, exchange_name, replay="off", ack="auto")
    async with running_bridge(env, tmp_path) as bridge:
        await server.publish(CHANNEL, 200)
        await wait_seqs(collector, 200)
        status = await bridge.status()
    assert status["endpoints"]["src"]["delivery"] == "ack"
    assert check_complete(collector, 200, record_property) == 0


# -- wildcard channels ---------------------------------------------------------------------------


async def test_wildcard_channels_deliver_every_matching_channel(
    cometd_server: NodeBayeuxServer, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    endpoint = {"url": cometd_server.url, "channels": ["/orders/*"], "exchange": exchange_name}
    async with running_bridge(bridge_env(tmp_path, {"src": endpoint}), tmp_path):
        # Not matched, and published first: had it been subscribed, it would arrive first.
        await cometd_server.publish("/invoices/created", 5)
        await cometd_server.publish("/orders/created", 20)
        await cometd_server.publish("/orders/paid", 20)
        await collector.wait_for(40, within=WAIT)
    by_key: dict[str | None, int] = {}
    for d in collector.deliveries:
        by_key[d.routing_key] = by_key.get(d.routing_key, 0) + 1
    assert by_key == {"orders.created": 20, "orders.paid": 20}, by_key
    assert {d.headers["cometd-channel"] for d in collector.deliveries} == {
        "/orders/created",
        "/orders/paid",
    }


# -- endpoint headers ----------------------------------------------------------------------------


class HeaderRecordingProxy:
    """An HTTP proxy in front of a long-polling Bayeux server that records request headers."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.headers: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self._session = ClientSession()
        path = "/" + self.upstream.split("//", 1)[1].split("/", 1)[1]
        self.url = f"http://127.0.0.1:{port}{path}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.headers.append(dict(request.headers))
        base = self.upstream.split("//", 1)[1].split("/", 1)[0]
        forward = {k: v for k, v in request.headers.items() if k.lower() in ("cookie",)}
        forward["Content-Type"] = request.headers.get("Content-Type", "application/json")
        async with self._session.request(
            request.method,
            f"http://{base}{request.rel_url}",
            data=await request.read(),
            headers=forward,
        ) as resp:
            body = await resp.read()
            response = web.Response(body=body, status=resp.status)
            response.content_type = resp.content_type
            for cookie in resp.headers.getall("Set-Cookie", []):
                response.headers.add("Set-Cookie", cookie)
            return response

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


async def test_endpoint_headers_reach_the_cometd_server_on_every_request(
    fake_bayeux: FakeBayeux, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    proxy = HeaderRecordingProxy(fake_bayeux.url)
    await proxy.start()
    try:
        endpoint = fake_endpoint(
            proxy.url, exchange_name, headers={"X-Tenant": "acme", "X-Trace": "t-1"}
        )
        async with running_bridge(bridge_env(tmp_path, {"src": endpoint}), tmp_path):
            fake_bayeux.publish(FAKE_CHANNEL, {"seq": 1})
            await collector.wait_for(1, within=WAIT)
    finally:
        await proxy.stop()
    assert len(proxy.headers) >= 3, "handshake, subscribe, connects"
    for headers in proxy.headers:
        assert headers.get("X-Tenant") == "acme", headers
        assert headers.get("X-Trace") == "t-1", headers


# -- the byte bound of the buffer ----------------------------------------------------------------


async def test_max_pending_bytes_stops_fetching_before_the_count_bound(
    fake_bayeux: FakeBayeux, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    # 20 KB bound, messages of ~2 KB, at most 5 in flight: full after about fifteen, long
    # before the count bound (1000), which alone would never stop fetching 200 messages.
    endpoint = fake_endpoint(
        fake_bayeux.url,
        exchange_name,
        max_pending_bytes=20_000,
        max_pending_count=1000,
        max_inflight=5,
    )
    async with pausable_proxy() as proxy:
        env = proxied(bridge_env(tmp_path, {"src": endpoint}), proxy.port)
        async with running_bridge(env, tmp_path) as bridge:
            proxy.pause()
            for seq in range(1, 201):
                fake_bayeux.publish(FAKE_CHANNEL, {"seq": seq, "pad": "x" * 2000})
                if seq % 10 == 0:
                    await asyncio.sleep(0.05)  # a steady rate: many connects, not one batch
            await wait_sample(bridge, "cometd_bridge_fetch_paused", 1, endpoint="src")
            metrics = await bridge.metrics()
            pending = sample(metrics, "cometd_bridge_pending_messages", endpoint="src")
            assert pending is not None
            assert pending < 200, f"{pending} pending: the byte bound did not stop fetching"
            proxy.resume()
            await collector.wait_for(200, within=WAIT)
    assert sorted({d.body["seq"] for d in collector.deliveries}) == list(range(1, 201))


# -- connection_timeout at daemon level ----------------------------------------------------------


async def test_connection_timeout_restarts_the_session_of_an_endpoint_whose_server_went_away(
    exchange_name: str, collector: QueueCollector, tmp_path: Path
) -> None:
    fake = FakeBayeux(timeout_ms=1000, max_interval_ms=3000)
    await fake.start("127.0.0.1", 0)
    url = fake.url
    endpoint = fake_endpoint(url, exchange_name, connection_timeout=2)
    try:
        async with running_bridge(bridge_env(tmp_path, {"src": endpoint}), tmp_path) as bridge:
            await fake.stop()  # the server goes away and stays away
            # 2 s without a connection, then the restart: well before the default 30 s.
            status = await bridge.wait_status(
                lambda s: s["endpoints"]["src"]["restarts"] >= 1, within=20
            )
            logged = await wait_log(
                bridge,
                lambda e: e["event"] == "endpoint session ended",
                "the session ended by connection_timeout",
            )
    finally:
        with contextlib.suppress(Exception):
            await fake.stop()
    assert not status["endpoints"]["src"]["up"]
    assert re.search(r"timeout|timed out|no connection", json.dumps(logged[0]), re.I), logged[0]
