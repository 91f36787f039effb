"""The prefetch bound on a server that acknowledges (cometd-nodejs-server's ack extension).

Such a server re-sends everything unacknowledged in each ``/meta/connect`` reply and expires a
session whose response is not read. A consumer that keeps up gets a large backlog within the
bound; one that stalls for several reconnect budgets keeps its session (the client sheds the
rest of each response message by message, the server sends it again), and afterwards every
message arrives once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.cometd import Client, ConnectionType, events
from bridge.cometd.ext import AckExtension
from tests.fixtures import servers as _servers
from tests.fixtures.servers import NodeBayeuxServer

from .conftest import WAIT, Recorder
from .test_prefetch_bound import Bounded


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"
BOUND = 42
MAX_INTERVAL_MS = 1500  # the stall case: the client must keep its session alive
# A consumer that keeps up must never be taken for a stalled one on a loaded machine: a
# generous budget (the client's keep-alive pace is min(timeout / 2, maxInterval / 3)).
LENIENT_MAX_INTERVAL_MS = 9000


@pytest.fixture
async def ack_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[NodeBayeuxServer]:
    _servers.require_node_deps()
    stall = bool(request.node.callspec.params["stall"])
    server = NodeBayeuxServer(
        kind="salesforce",
        options={
            "timeout": 1000 if stall else 6000,
            "interval": 0,
            "max_interval": MAX_INTERVAL_MS if stall else LENIENT_MAX_INTERVAL_MS,
            "ack": 1,
            "replay": 0,
            "buffer_file": str(tmp_path / "sf-buffer.json"),
        },
        connection_type="long-polling",
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _receive_all(client: Client, ack: AckExtension, bounded: Bounded, n: int) -> list[int]:
    seqs: list[int] = []
    try:
        await _take(client, ack, bounded, n, seqs)
    except TimeoutError:
        raise AssertionError(
            f"{len(seqs)} of {n} received; {ack.messages_shed} shed, "
            f"{ack.duplicates_dropped} re-sends dropped, ack {ack.acked}"
        ) from None
    return seqs


async def _take(
    client: Client, ack: AckExtension, bounded: Bounded, n: int, seqs: list[int]
) -> None:
    async with asyncio.timeout(WAIT + n / 200):
        while len(seqs) < n:
            bounded.check()
            for message in await client.receive_many(7):
                seqs.append(message["data"]["payload"]["seq"])
                ack.confirm(
                    ack.ack_tag_of(message)
                )  # as the daemon does once the broker confirmed it
            bounded.check()


@pytest.mark.parametrize(
    ("queued", "pad", "stall"), [(2_000, 50, False), (20_000, 50, False), (2_000, 2000, True)]
)
async def test_bound_holds_on_an_ack_server_and_all_arrive_once(
    ack_server: NodeBayeuxServer, queued: int, pad: int, stall: bool
) -> None:
    recorder = Recorder()
    bounded = Bounded(recorder, BOUND, None)
    ack = AckExtension()
    client = Client(
        ack_server.url,
        ConnectionType.LONG_POLLING,
        extensions=[ack],
        max_pending_count=BOUND,
        connection_timeout=None,
        listener=bounded,
    )
    bounded.client = client
    async with client:
        assert ack.supported is True
        await client.subscribe(CHANNEL)
        session = client.client_id
        published = await ack_server.publish(CHANNEL, queued, size=pad)
        await recorder.wait_count(events.FetchPaused, 1)
        if stall:
            # The fault: nothing is taken for three reconnect budgets (its length is the point
            # of the test, not a synchronisation).
            await asyncio.sleep(3 * MAX_INTERVAL_MS / 1000)
            bounded.check()
            assert ack.messages_shed > 0, "the re-sent backlog was shed while the buffer was full"
        seqs = await _receive_all(client, ack, bounded, queued)
        assert client.client_id == session, "the server kept the session"
        expected = list(range(published["first_seq"], published["last_seq"] + 1))
        missing = sorted(set(expected) - set(seqs))
        assert sorted(seqs) == expected, (
            f"missing {missing[:10]}, {len(seqs) - len(set(seqs))} twice"
        )
    bounded.assert_held()
