"""A full buffer on an ack server: the client keeps the session alive and holds the ack.

Our Client + AckExtension against the Salesforce-like server with cometd-nodejs-server's real
acknowledgement extension. The consumer stalls for several of the server's maxInterval while
the server streams; a client that stopped polling would lose its session and, with it, the
server's unacknowledged queue. Here the session survives and, once released, every message
arrives exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.cometd import Client, ConnectionType, events
from bridge.cometd.ext import AckExtension

from .conftest import SalesforceFactory
from .test_client_replay import Recorder, seq


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"
WAIT = 30.0  # bound on every wait for messages
MAX_INTERVAL_MS = 1500  # the server's reconnect budget after each reply
COUNT = 300
RATE = 100  # events per second: the stream goes on during the stall
MAX_PENDING = 20


class CountingAck(AckExtension):
    """The real extension; also counts the /meta/connect requests it stamps."""

    def __init__(self) -> None:
        super().__init__()
        self.connects = 0

    async def outgoing(self, payload: Any, headers: Any) -> None:
        self.connects += sum(m.get("channel") == "/meta/connect" for m in payload)
        await super().outgoing(payload, headers)


async def test_full_buffer_keeps_the_ack_session_alive(
    salesforce_factory: SalesforceFactory,
) -> None:
    # The server does not advertise maxInterval; its held timeout (1 s) sets the client's
    # keep-alive pace (0.5 s), well inside the 1.5 s budget.
    server = salesforce_factory(ack=1, replay=0, timeout=1000, max_interval=MAX_INTERVAL_MS)
    ack = CountingAck()
    recorder = Recorder()
    client = Client(
        server.url,
        ConnectionType.LONG_POLLING,
        extensions=[ack],
        max_pending_count=MAX_PENDING,
        connection_timeout=None,
        listener=recorder,
    )
    async with client:
        assert ack.supported is True
        await client.subscribe(CHANNEL)
        session = client.client_id
        await server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
        await recorder.wait_for(events.FetchPaused)
        connects = ack.connects

        # The fault: nothing is taken from the client for three reconnect budgets. Its length
        # is the point of the test (not a synchronisation), the stream goes on meanwhile.
        await asyncio.sleep(3 * MAX_INTERVAL_MS / 1000)

        keepalives = ack.connects - connects
        # The server answers at once while it holds unacknowledged messages: a client that
        # did not pace its keep-alives would have sent thousands by now (paced: about 9).
        assert 1 <= keepalives < 30
        stats = await server.stats()
        assert stats["session_ids"] == [session], "the server kept the session"
        assert ack.messages_shed > 0, "new messages were left with the server"
        # Everything held is unacknowledged; what was shed is not counted as held.
        assert ack.outstanding == client.pending_count

        received: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT):
            while len({seq(m) for m in received}) < COUNT:
                batch = await client.receive_many(MAX_PENDING)
                received.extend(batch)
                for message in batch:  # the broker confirm, played by the test
                    ack.confirm(ack.ack_tag_of(message))

        assert client.client_id == session
    assert sorted(seq(m) for m in received) == list(range(1, COUNT + 1)), "each exactly once"
    assert sum(isinstance(e, events.Handshaken) for e in recorder.events) == 1
    assert not [e for e in recorder.events if isinstance(e, events.Reconnecting)]
    assert any(isinstance(e, events.FetchResumed) for e in recorder.events)
    print(
        f"keep-alive connects while stalled: {keepalives}; left with the server: "
        f"{ack.messages_shed} (re-sent after the pause)"
    )
