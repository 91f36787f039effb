"""The embedded Bayeux server (bridge.demo) spoken to with raw aiohttp, both transports."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from bridge.demo import ACCOUNT_CHANNEL, ORDER_CHANNEL, BayeuxServer, DemoSource
from tests.fixtures.raw_bayeux import RawBayeux, WebSocketClosedError


pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def server() -> AsyncIterator[BayeuxServer]:
    async with BayeuxServer(timeout_ms=2000, max_interval_ms=3000) as bayeux:
        yield bayeux


@pytest.fixture(params=["long-polling", "websocket"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def until_held(server: BayeuxServer, count: int = 1) -> None:
    # In-process state with no event for "parked"; a bounded poll of one attribute.
    async with asyncio.timeout(10):
        while server.stats()["held_connects"] < count:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_handshake_offers_both_transports(server: BayeuxServer, transport: str) -> None:
    async with RawBayeux(server.url, websocket=transport == "websocket") as bayeux:
        reply = await bayeux.handshake()
        assert reply["successful"] is True
        assert reply["version"] == "1.0"
        assert set(reply["supportedConnectionTypes"]) == {"websocket", "long-polling"}
        assert reply["advice"] == {"reconnect": "retry", "interval": 0, "timeout": 2000}
        connect = await bayeux.connect(advice_timeout=0)
        assert connect["successful"] is True
        assert connect["advice"]["timeout"] == 2000


async def test_published_messages_arrive_in_order(server: BayeuxServer, transport: str) -> None:
    async with RawBayeux(server.url, websocket=transport == "websocket") as bayeux:
        await bayeux.handshake()
        await bayeux.connect(advice_timeout=0)
        assert (await bayeux.subscribe("/orders"))["successful"]
        for seq in range(1, 501):
            assert server.publish("/orders", {"seq": seq}) == 1
        async with asyncio.timeout(30):
            events = await bayeux.collect("/orders", 500)
    assert [e["data"]["seq"] for e in events] == list(range(1, 501))
    assert len({e["id"] for e in events}) == 500


async def test_held_connect_is_answered_when_a_message_arrives(
    server: BayeuxServer, transport: str
) -> None:
    async with RawBayeux(server.url, websocket=transport == "websocket") as bayeux:
        await bayeux.handshake()
        await bayeux.connect(advice_timeout=0)
        await bayeux.subscribe("/x")
        async with asyncio.timeout(10):
            held = asyncio.create_task(bayeux.connect())
            await until_held(server)
            assert not held.done()
            server.publish("/x", {"n": 1})
            assert (await held)["successful"] is True
    assert [e["data"] for e in bayeux.events] == [{"n": 1}]


async def test_a_newer_connect_releases_the_held_one(server: BayeuxServer) -> None:
    async with RawBayeux(server.url) as first, RawBayeux(server.url) as second:
        await first.handshake()
        second.client_id = first.client_id
        await first.connect(advice_timeout=0)
        async with asyncio.timeout(10):
            held = asyncio.create_task(first.connect())
            await until_held(server)
            newer = asyncio.create_task(second.connect())
            assert (await held)["successful"] is True
            await until_held(server)
            server.disconnect_session(str(first.client_id))
            await newer


async def test_client_publish_reaches_other_subscribers_and_wildcards(
    server: BayeuxServer,
) -> None:
    async with RawBayeux(server.url) as publisher, RawBayeux(server.url) as listener:
        await publisher.handshake()
        await listener.handshake()
        await listener.connect(advice_timeout=0)
        assert (await listener.subscribe("/event/*", "/data/**"))["successful"]
        replies = await publisher.exchange(
            [
                {"channel": "/event/Order__e", "data": {"a": 1}},
                {"channel": "/event/deep/er", "data": {"b": 2}},
                {"channel": "/data/x/y", "data": {"c": 3}},
                {"channel": "/service/echo", "data": {"d": 4}},
            ]
        )
        assert all(r["successful"] for r in replies)
        async with asyncio.timeout(10):
            events = await listener.collect("/data/x/y", 1)
    assert [e["channel"] for e in listener.events] == ["/event/Order__e", "/data/x/y"]
    assert events[0]["data"] == {"c": 3}


async def test_unsubscribe_stops_delivery(server: BayeuxServer) -> None:
    async with RawBayeux(server.url) as bayeux:
        await bayeux.handshake()
        await bayeux.subscribe("/a")
        reply = bayeux.reply_to(
            await bayeux.exchange([{"channel": "/meta/unsubscribe", "subscription": "/a"}]),
            "/meta/unsubscribe",
        )
        assert reply["successful"] is True
        assert server.publish("/a", {}) == 0


async def test_unknown_and_dropped_sessions_get_402(server: BayeuxServer, transport: str) -> None:
    async with RawBayeux(server.url, websocket=transport == "websocket") as bayeux:
        await bayeux.handshake()
        assert server.drop_sessions() == 1
        reply = await bayeux.connect(advice_timeout=0)
    assert reply["successful"] is False
    assert reply["error"] == "402::session_unknown"
    assert reply["advice"] == {"reconnect": "handshake", "interval": 0}


async def test_server_side_disconnect(server: BayeuxServer, transport: str) -> None:
    async with RawBayeux(server.url, websocket=transport == "websocket") as bayeux:
        await bayeux.handshake()
        await bayeux.connect(advice_timeout=0)
        async with asyncio.timeout(10):
            held = asyncio.create_task(
                bayeux.exchange([{"channel": "/meta/connect", "connectionType": transport}])
            )
            await until_held(server)
            assert server.disconnect_session(str(bayeux.client_id))
            received = await held
    connect = bayeux.reply_to(received, "/meta/connect")
    assert connect["successful"] is True
    assert connect["advice"]["reconnect"] == "none"
    assert received[-1] == {"channel": "/meta/disconnect", "successful": True}
    assert server.stats()["sessions"] == 0


async def test_client_disconnect_removes_the_session(server: BayeuxServer) -> None:
    async with RawBayeux(server.url) as bayeux:
        await bayeux.handshake()
        reply = bayeux.reply_to(
            await bayeux.exchange([{"channel": "/meta/disconnect"}]), "/meta/disconnect"
        )
    assert reply["successful"] is True
    assert server.stats()["sessions"] == 0


async def test_sessions_expire_after_max_interval() -> None:
    async with BayeuxServer(timeout_ms=100, max_interval_ms=200) as server:
        async with RawBayeux(server.url) as bayeux:
            await bayeux.handshake()
        async with asyncio.timeout(10):
            while server.stats()["sessions"]:  # noqa: ASYNC110 (expiry is time-driven)
                await asyncio.sleep(0.05)


async def test_browser_cookie_is_required_when_enabled() -> None:
    async with BayeuxServer(browser_cookie=True) as server, RawBayeux(server.url) as bayeux:
        await bayeux.handshake()
        assert any(c.key == "BAYEUX_BROWSER" for c in bayeux._session.cookie_jar)
        assert (await bayeux.connect(advice_timeout=0))["successful"] is True
        bayeux._session.cookie_jar.clear()
        reply = await bayeux.connect(advice_timeout=0)
    assert reply["error"] == "402::session_unknown"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "400::body is not JSON"),
        (b"[]", 400, "400::body must be a non-empty JSON array"),
        (b'"text"', 400, "400::body must be a non-empty JSON array"),
    ],
)
async def test_malformed_bodies_get_http_400_with_a_bayeux_error(
    server: BayeuxServer, body: bytes, status: int, error: str
) -> None:
    async with aiohttp.ClientSession() as session, session.post(server.url, data=body) as response:
        assert response.status == status
        replies = await response.json()
    assert replies[0]["successful"] is False
    assert replies[0]["error"].startswith(error)


async def test_oversize_request_gets_413() -> None:
    async with (
        BayeuxServer(max_request_bytes=1024) as server,
        aiohttp.ClientSession() as session,
        session.post(server.url, data=b"[" + b" " * 4096 + b"]") as response,
    ):
        assert response.status == 413


async def test_invalid_messages_get_error_replies(server: BayeuxServer) -> None:
    async with RawBayeux(server.url) as bayeux:
        await bayeux.handshake()
        replies = await bayeux.post(
            [
                1,
                {"channel": 5, "id": "a"},
                {"channel": "/meta/subscribe", "id": "b", "clientId": bayeux.client_id},
                {
                    "channel": "/meta/subscribe",
                    "id": "c",
                    "clientId": bayeux.client_id,
                    "subscription": "/meta/**",
                },
                {
                    "channel": "/meta/subscribe",
                    "id": "d",
                    "clientId": bayeux.client_id,
                    "subscription": "no/slash",
                },
                {"channel": "/meta/bogus", "id": "e", "clientId": bayeux.client_id},
                {"channel": "/x", "id": "f", "clientId": bayeux.client_id},
                {
                    "channel": "/meta/connect",
                    "id": "g",
                    "clientId": bayeux.client_id,
                    "connectionType": "carrier-pigeon",
                },
            ]
        )
    errors = [(r.get("id"), r["successful"], r["error"]) for r in replies]
    assert errors == [
        (None, False, "400::invalid_message"),
        ("a", False, "400::invalid_message"),
        ("b", False, "403::subscription_missing"),
        ("c", False, "403:/meta/**:subscribe_denied"),
        ("d", False, "400:no/slash:channel_invalid"),
        ("e", False, "400:/meta/bogus:unknown_meta_channel"),
        ("f", False, "400::data_missing"),
        ("g", False, "400:carrier-pigeon:invalid_connection_type"),
    ]


async def test_handshake_without_a_common_transport_is_refused(server: BayeuxServer) -> None:
    async with RawBayeux(server.url) as bayeux:
        reply = await bayeux.handshake(supportedConnectionTypes=["callback-polling"])
        missing = await bayeux.handshake(supportedConnectionTypes=None)
    assert reply["successful"] is False
    assert reply["error"].startswith("405:")
    assert reply["advice"]["reconnect"] == "none"
    assert missing["error"] == "400::supportedConnectionTypes_missing"


async def test_websocket_can_be_disabled() -> None:
    async with (
        BayeuxServer(connection_types=("long-polling",)) as server,
        RawBayeux(server.url, websocket=True) as bayeux,
    ):
        assert (await bayeux.handshake())["supportedConnectionTypes"] == ["long-polling"]
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await bayeux.connect(advice_timeout=0)


async def test_demo_source_streams_salesforce_shaped_events() -> None:
    async with DemoSource(rate=0, seed=1) as source, RawBayeux(source.url) as bayeux:
        await bayeux.handshake()
        await bayeux.subscribe(ORDER_CHANNEL, ACCOUNT_CHANNEL)
        for _ in range(3):
            source.emit(ORDER_CHANNEL)
        source.emit(ACCOUNT_CHANNEL)
        async with asyncio.timeout(10):
            orders = await bayeux.collect(ORDER_CHANNEL, 3)
            accounts = await bayeux.collect(ACCOUNT_CHANNEL, 1)
    replay_ids = [o["data"]["event"]["replayId"] for o in orders]
    assert replay_ids == sorted(replay_ids)
    assert len(set(replay_ids)) == 3
    assert orders[0]["data"]["payload"]["OrderNumber__c"] == "ORD-000001"
    assert orders[0]["data"]["event"]["createdDate"].endswith("Z")
    header = accounts[0]["data"]["payload"]["ChangeEventHeader"]
    assert header["entityName"] == "Account"
    assert source.published == {ORDER_CHANNEL: 3, ACCOUNT_CHANNEL: 1}


async def test_demo_source_publishes_on_its_own(demo_source: DemoSource) -> None:
    async with RawBayeux(demo_source.url) as bayeux:
        await bayeux.handshake()
        await bayeux.subscribe("/**")
        async with asyncio.timeout(20):
            while len(bayeux.events) < 10:
                await bayeux.connect()
    channels = {e["channel"] for e in bayeux.events}
    assert channels <= {ORDER_CHANNEL, ACCOUNT_CHANNEL}


async def test_python_m_bridge_demo_runs_and_stops_on_sigterm() -> None:
    args = ["-m", "bridge.demo", "--host", "127.0.0.1", "--port", "0", "--rate", "2"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(30):
            assert process.stdout is not None
            first = (await process.stdout.readline()).decode()
            assert first.startswith("demo CometD source: http://127.0.0.1:"), first
            process.send_signal(signal.SIGTERM)
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert "stopping; published" in out.decode()


def test_messages_are_json_serialisable() -> None:
    from bridge.demo.events import EventFactory

    factory = EventFactory(seed=3)
    for channel in factory.channels:
        json.dumps(factory.next(channel))


async def test_stop_answers_held_connects_promptly(transport: str) -> None:
    server = BayeuxServer(timeout_ms=60_000)
    await server.start()
    async with RawBayeux(server.url, websocket=transport == "websocket") as bayeux:
        await bayeux.handshake()
        await bayeux.connect(advice_timeout=0)
        async with asyncio.timeout(15):
            held = asyncio.create_task(bayeux.connect())
            await until_held(server)
            await server.stop()
            # Long-polling gets its (successful) reply; a WebSocket is closed by the server.
            outcome = await asyncio.gather(held, return_exceptions=True)
    assert isinstance(outcome[0], dict | WebSocketClosedError), outcome
