"""Advice a server should never give: no hot loop, no parking, no slow recovery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from bridge.cometd import Client, ConnectionType, TransportTimeoutError, events
from tests.fakes.fake_bayeux import FakeBayeux, patch_reply
from tests.fixtures.servers import NodeBayeuxServer

from .conftest import WAIT, Recorder


pytestmark = pytest.mark.integration

CHANNEL = "/fake/stream"


@pytest.fixture
async def instant_fake() -> AsyncIterator[FakeBayeux]:
    """A server that never holds a poll and advises ``interval: 0``."""
    server = FakeBayeux(timeout_ms=0, interval_ms=0, max_interval_ms=2000)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def requests_in(fake: FakeBayeux, channel: str, seconds: float) -> int:
    start = time.monotonic()
    await asyncio.sleep(seconds)  # a window to count requests in, not synchronisation
    return fake.count(channel, since=start)


@pytest.mark.parametrize("transport", [ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET])
async def test_instant_empty_replies_are_paced_to_10_requests_per_second(
    instant_fake: FakeBayeux, recorder: Recorder, transport: ConnectionType
) -> None:
    async with Client(instant_fake.url, transport, listener=recorder) as client:
        await client.subscribe(CHANNEL)
        await asyncio.sleep(1.0)  # the first second of instant empty replies (ramp-up)
        count = await requests_in(instant_fake, "/meta/connect", 2.0)
        assert count <= 2 * 10 + 1, f"{count} connects in 2 s"
        # Still streaming: an event goes out with the next poll.
        instant_fake.publish(CHANNEL, {"n": 1})
        async with asyncio.timeout(WAIT):
            assert (await client.receive())["data"] == {"n": 1}


async def test_reconnect_handshake_on_every_successful_connect_backs_off(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    fake_bayeux.on("/meta/connect", patch_reply(advice={"reconnect": "handshake", "interval": 0}))
    async with Client(fake_bayeux.url, ConnectionType.LONG_POLLING, listener=recorder):
        count = await requests_in(fake_bayeux, "/meta/handshake", 3.0)
        # Backoff 0.1 s doubling (half-jittered): at most ~7 in 3 s; a hot loop made thousands.
        assert count <= 12, f"{count} handshakes in 3 s"
        delays = [e.delay for e in recorder.of(events.Reconnecting)]
        assert all(d > 0 for d in delays)  # no session ever worked: each one backs off
        assert max(delays) > 0.3  # and the backoff grows


async def test_huge_interval_is_clamped_logged_once_and_never_parks_silently(
    fake_bayeux: FakeBayeux, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.cometd.client")
    fake_bayeux.on("/meta/connect", patch_reply(advice={"reconnect": "retry", "interval": 1e15}))
    client = Client(
        fake_bayeux.url, ConnectionType.LONG_POLLING, listener=recorder, connection_timeout=1.0
    )
    async with client:
        # The client may not poll for up to 10 minutes (the clamp): receive() says so within
        # connection_timeout instead of waiting as if connected.
        with pytest.raises(TransportTimeoutError):
            async with asyncio.timeout(WAIT):
                await client.receive()
    clamped = [r for r in caplog.records if "clamped" in r.getMessage()]
    assert len(clamped) == 1


async def test_faye_websocket_session_drop_rehandshakes_at_once(
    faye_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    # Every moment without a session loses events on a server without replay: the
    # unknown-session re-handshake the server advises with interval 0 goes out at once,
    # whatever failed just before it (a network error's backoff is not carried over).
    async with Client(faye_server.url, ConnectionType.WEBSOCKET, listener=recorder) as client:
        await client.subscribe("/faye/stream")
        for drop in range(1, 4):
            await faye_server.drop_sessions()
            await recorder.wait_count(events.Connected, drop + 1)
        unknown = [e for e in recorder.of(events.Reconnecting) if e.reason == "unknown_session"]
        assert unknown, [e.reason for e in recorder.of(events.Reconnecting)]
        assert all(e.delay == 0.0 for e in unknown), [e.delay for e in unknown]
