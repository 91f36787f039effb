"""The fault proxy itself, against a real aiohttp server: each fault lands where it says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.faults.conftest import ProxyFactory


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    """An HTTP server: POST /events answers a Bayeux-like batch with data, /empty without;
    /ws echoes each text message back as an event frame."""

    async def events(request: web.Request) -> web.Response:
        batch = [{"channel": "/x", "data": {"seq": n, "pad": "p" * 200}} for n in range(1, 11)]
        return web.json_response(batch)

    async def empty(request: web.Request) -> web.Response:
        return web.json_response([{"channel": "/meta/connect", "successful": True}])

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for message in sock:
            seq = int(message.data)
            await sock.send_str(json.dumps([{"channel": "/x", "data": {"seq": seq}}]))
        return sock

    app = web.Application()
    app.router.add_post("/events", events)
    app.router.add_post("/empty", empty)
    app.router.add_get("/ws", ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_cut_lands_mid_body_of_a_response_carrying_data(
    origin: str, fault_proxy_factory: ProxyFactory
) -> None:
    proxy = await fault_proxy_factory(origin)
    url = proxy.url_for(origin)
    async with aiohttp.ClientSession() as session:
        cut = proxy.arm_cut(after_bytes=100)
        # A response without data passes untouched, on the same kept-alive connection.
        async with session.post(url + "/empty") as resp:
            assert (await resp.json())[0]["successful"] is True
        assert not cut.done()
        with pytest.raises(aiohttp.ClientError):
            async with session.post(url + "/events") as resp:
                await resp.read()
        report = await asyncio.wait_for(cut, 5)
        # The next request goes through again.
        async with session.post(url + "/events") as resp:
            assert len(await resp.json()) == 10
    assert report.kind == "http"
    assert report.forwarded == 100 < report.size
    assert report.seqs == list(range(1, 11))
    assert proxy.counters["cuts"] == 1


async def test_a_cut_lands_mid_websocket_frame(
    origin: str, fault_proxy_factory: ProxyFactory
) -> None:
    proxy = await fault_proxy_factory(origin)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(proxy.url_for(origin) + "/ws")
        await ws.send_str("1")
        assert json.loads((await ws.receive()).data)[0]["data"]["seq"] == 1
        cut = proxy.arm_cut(after_bytes=5)
        await ws.send_str("2")
        message = await ws.receive()
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        report = await asyncio.wait_for(cut, 5)
    assert report.kind == "websocket"
    assert report.seqs == [2]
    assert report.forwarded == 5


async def test_stall_holds_traffic_until_resumed_and_reset_breaks_it(
    origin: str, fault_proxy_factory: ProxyFactory
) -> None:
    proxy = await fault_proxy_factory(origin)
    url = proxy.url_for(origin)
    async with aiohttp.ClientSession() as session:
        proxy.stall()
        request = asyncio.ensure_future(session.post(url + "/empty"))
        done, _ = await asyncio.wait({request}, timeout=0.5)  # a blackhole: nothing comes back
        assert not done
        proxy.resume()
        resp = await asyncio.wait_for(request, 5)
        assert resp.status == 200
        resp.release()
        assert proxy.reset_all() == 1
        assert proxy.counters == {**proxy.counters, "stalls": 1, "resets": 1}
        with pytest.raises(aiohttp.ClientError):  # the kept-alive connection was reset
            async with session.post(url + "/events") as resp:
                await resp.read()
        proxy.set_delay(0.01)
        proxy.set_throttle(100_000)
        async with session.post(url + "/events") as resp:  # a fresh connection
            assert len(await resp.json()) == 10
    assert proxy.counters["connections"] == 2
