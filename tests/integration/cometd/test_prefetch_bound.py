"""The prefetch bound holds at every moment the application can observe, on every real server
and transport, however much the server has queued; then everything arrives once.

Servers answer a ``/meta/connect`` with everything queued for the session (cometd-nodejs-server)
or push every message as its own frame (faye over WebSocket): the bound must come from the
client reading no more than it has room for.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bridge.cometd import Client, ConnectionType, events
from tests.fixtures.servers import NodeBayeuxServer

from .conftest import WAIT, Recorder


pytestmark = pytest.mark.integration

CHANNEL = "/test/prefetch"
BOUND = 42


def _encoded_size(message: dict[str, Any]) -> int:
    # The servers send compact JSON (JSON.stringify); parsing keeps the key order.
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())


class Bounded:
    """Checks the bound at every client event (called synchronously inside the client, which
    logs a listener's exception: ``worst`` keeps what was seen for the test to assert)."""

    def __init__(self, recorder: Recorder, count: int, size: int | None) -> None:
        self.recorder = recorder
        self.count = count
        self.size = size
        self.client: Client | None = None
        self.worst: tuple[int, int] = (0, 0)

    def __call__(self, event: events.ClientEvent) -> None:
        self.check()
        self.recorder(event)

    def assert_held(self) -> None:
        if self.count > 0:
            assert self.worst[0] <= self.count, f"pending_count reached {self.worst[0]}"
        if self.size is not None:
            assert self.worst[1] <= self.size, f"pending_bytes reached {self.worst[1]}"

    def check(self) -> None:
        client = self.client
        if client is None:
            return
        pending = (client.pending_count, client.pending_bytes)
        self.worst = (max(self.worst[0], pending[0]), max(self.worst[1], pending[1]))
        if self.count > 0:
            assert client.pending_count <= self.count, pending
        if self.size is not None:
            assert client.pending_bytes <= self.size, pending


@pytest.mark.parametrize(
    ("queued", "pad", "count", "size"),
    [
        (400, 100, BOUND, None),
        (20_000, 100, BOUND, None),
        (400, 300, 0, 8_000),
    ],
    ids=["400-count", "20000-count", "400-bytes"],
)
async def test_pending_never_exceeds_the_bound_and_all_arrive_once(
    bayeux_server: NodeBayeuxServer,
    recorder: Recorder,
    queued: int,
    pad: int,
    count: int,
    size: int | None,
) -> None:
    assert bayeux_server.connection_type is not None
    bounded = Bounded(recorder, count, size)
    client = Client(
        bayeux_server.url,
        ConnectionType(bayeux_server.connection_type),
        connection_timeout=15.0,
        max_pending_count=count,
        max_pending_bytes=size,
        listener=bounded,
    )
    bounded.client = client
    async with client:
        await client.subscribe(CHANNEL)
        published = await bayeux_server.publish(CHANNEL, queued, size=pad)
        # Everything is queued at the server (or in flight) and nobody receives: the client
        # fills its buffer, pauses, and holds no more than the bound.
        await recorder.wait_count(events.FetchPaused, 1)
        bounded.check()
        assert bounded.worst[0] > 0

        before = client.pending_bytes
        first = await client.receive_many(10)
        assert before - client.pending_bytes == sum(_encoded_size(m) for m in first), (
            "pending_bytes is the exact encoded size of the buffered messages"
        )
        seqs = [m["data"]["seq"] for m in first]
        async with asyncio.timeout(WAIT + queued / 200):
            while len(seqs) < queued:
                bounded.check()
                for message in await client.receive_many(7):
                    assert message["channel"] == CHANNEL
                    seqs.append(message["data"]["seq"])
                bounded.check()
        expected = list(range(published["first_seq"], published["last_seq"] + 1))
        missing = sorted(set(expected) - set(seqs))
        assert seqs == expected, f"missing {missing[:10]}, {len(seqs) - len(set(seqs))} twice"
        assert client.pending_count == 0
        assert client.pending_bytes == 0
    bounded.assert_held()


async def test_a_websocket_held_longer_than_its_deadlines_keeps_its_socket(
    faye_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    # While the buffer is full the reader reads nothing, not even pongs or the /meta/connect
    # reply: neither the heartbeat (pong within 1 s) nor the poll deadline (2 s hold + 1 s)
    # may take that for a dead socket, or faye's pushed messages would be lost with it.
    bounded = Bounded(recorder, BOUND, None)
    client = Client(
        faye_server.url,
        ConnectionType.WEBSOCKET,
        max_pending_count=BOUND,
        network_delay=1.0,
        heartbeat=2.0,
        listener=bounded,
    )
    bounded.client = client
    async with client:
        await client.subscribe(CHANNEL)
        # Far more than aiohttp's frame queue holds (2 x 64 KB): it stops reading the socket.
        published = await faye_server.publish(CHANNEL, 400, size=2000)
        await recorder.wait_count(events.FetchPaused, 1)
        # The stall is the point of the test (several deadlines long), not a synchronisation.
        await asyncio.sleep(6.0)
        seqs: list[int] = []
        async with asyncio.timeout(WAIT):
            while len(seqs) < 400:
                seqs += [m["data"]["seq"] for m in await client.receive_many(7)]
        assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))
        assert recorder.of(events.Reconnecting) == []
    bounded.assert_held()


async def test_close_takes_the_rest_of_a_held_response(
    cometd_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    # cometd-nodejs-server counts a response as delivered once written: closing the client
    # must not leave the unread rest of a held response in the socket it closes.
    client = Client(
        cometd_server.url,
        ConnectionType.LONG_POLLING,
        max_pending_count=BOUND,
        listener=recorder,
    )
    async with client:
        await client.subscribe(CHANNEL)
        published = await cometd_server.publish(CHANNEL, 400, size=100)
        await recorder.wait_count(events.FetchPaused, 1)
    seqs: list[int] = []
    async with asyncio.timeout(WAIT):
        while client.has_pending_messages:
            seqs += [m["data"]["seq"] for m in await client.receive_many(100)]
    assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))
