"""The endpoint lease and the shared positions against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator

import aiormq
import aiormq.abc
import pytest
from pamqp import commands as spec

from bridge.amqp.lease import LEASE_QUEUE_ARGUMENTS, Lease, lease_queue
from bridge.cli import _parser
from bridge.positions import cli
from bridge.positions.rabbitmq_cli import LeaseBusy, change
from bridge.positions.rabbitmq_store import (
    position_queue,
    read_positions,
    write_positions,
)
from bridge.positions.store import PositionStoreError, StoredPosition


pytestmark = pytest.mark.integration

WAIT = 10.0


@pytest.fixture
async def endpoint(amqp_url: str) -> AsyncIterator[str]:
    name = f"lease{uuid.uuid4().hex[:8]}"
    yield name
    conn = await aiormq.connect(amqp_url)
    try:
        channel = await conn.channel()
        for queue in (lease_queue(name), position_queue(name)):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
    finally:
        await conn.close()


@pytest.fixture
async def connections(amqp_url: str) -> AsyncIterator[list[aiormq.abc.AbstractConnection]]:
    opened: list[aiormq.abc.AbstractConnection] = []
    for _ in range(3):
        opened.append(await aiormq.connect(amqp_url))
    try:
        yield opened
    finally:
        for conn in opened:
            with contextlib.suppress(Exception):
                await conn.close()


async def holder(leases: list[Lease]) -> Lease:
    """The one lease that received the token (waits for one, fails if none within WAIT)."""
    waits = [asyncio.ensure_future(lease.acquired.wait()) for lease in leases]
    try:
        done, _ = await asyncio.wait(waits, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    assert done, "no candidate received the lease token"
    held = [lease for lease in leases if lease.held]
    assert len(held) == 1, f"{len(held)} holders"
    return held[0]


async def ready_tokens(conn: aiormq.abc.AbstractConnection, endpoint: str) -> int:
    channel = await conn.channel()
    try:
        ok = await channel.queue_declare(
            lease_queue(endpoint), durable=True, arguments=LEASE_QUEUE_ARGUMENTS
        )
        return int(ok.message_count or 0)
    finally:
        await channel.close()


async def test_candidates_entering_at_once_one_owner_and_one_ready_token_at_most(
    connections: list[aiormq.abc.AbstractConnection], endpoint: str
) -> None:
    leases = [Lease(endpoint) for _ in connections]
    await asyncio.gather(*(lease.enter(c) for lease, c in zip(leases, connections, strict=True)))
    owner = await holder(leases)
    # However many seeded concurrently, the queue keeps at most one ready token, and the
    # others stay with the broker: only the single active consumer ever receives.
    assert await ready_tokens(connections[0], endpoint) <= 1
    for lease in leases:
        if lease is not owner:
            assert not lease.acquired.is_set()
    for lease in leases:
        await lease.release()


async def test_the_owners_connection_closes_the_next_candidate_owns_and_the_owner_is_told(
    connections: list[aiormq.abc.AbstractConnection], endpoint: str
) -> None:
    lost: list[str] = []
    first = Lease(endpoint, on_lost=lambda: lost.append("first"))
    await first.enter(connections[0])
    assert await holder([first]) is first
    second = Lease(endpoint, on_lost=lambda: lost.append("second"))
    await second.enter(connections[1])

    await connections[0].close()
    # Told synchronously from the close: the owner stops before anything else runs.
    assert lost == ["first"]
    assert first.lost
    assert not first.held
    assert await holder([second]) is second
    await second.release()
    assert lost == ["first"], "a release is no loss"


async def test_a_release_hands_the_token_to_the_next_candidate(
    connections: list[aiormq.abc.AbstractConnection], endpoint: str
) -> None:
    first, second = Lease(endpoint), Lease(endpoint)
    await first.enter(connections[0])
    assert await holder([first]) is first
    await second.enter(connections[1])
    assert not second.acquired.is_set()
    await first.release()
    assert await holder([second]) is second
    assert not first.lost
    await second.release()


async def test_positions_with_their_epoch_survive_reads_and_the_last_write_wins(
    connections: list[aiormq.abc.AbstractConnection], endpoint: str
) -> None:
    channel = await connections[0].channel(publisher_confirms=True)
    assert await read_positions(channel, endpoint) == (0, {})
    old = {"/event/A": StoredPosition(5, 1.0, None)}
    new = {"/event/A": StoredPosition(9, 2.0, "2026-01-01T00:00:00Z")}
    await write_positions(channel, endpoint, 1, old)
    await write_positions(channel, endpoint, 2, new)
    other = await connections[1].channel()
    # Reading returns the message to the queue: a second reader sees the same document.
    assert await read_positions(other, endpoint) == (2, new)
    assert await read_positions(channel, endpoint) == (2, new)


async def test_a_corrupt_positions_document_is_an_error_not_a_fresh_start(
    connections: list[aiormq.abc.AbstractConnection], endpoint: str
) -> None:
    channel = await connections[0].channel(publisher_confirms=True)
    await read_positions(channel, endpoint)  # declares the queue
    await channel.basic_publish(
        b'{"epoch": "x"}',
        routing_key=position_queue(endpoint),
        properties=spec.Basic.Properties(delivery_mode=2),
    )
    with pytest.raises(PositionStoreError, match="corrupt"):
        await read_positions(channel, endpoint)
    # Still there for an operator to inspect.
    with pytest.raises(PositionStoreError):
        await read_positions(channel, endpoint)


async def test_positions_cli_in_rabbitmq_mode_sets_under_the_lease_and_shows(
    amqp_url: str, connections: list[aiormq.abc.AbstractConnection], endpoint: str
) -> None:
    env = {"BRIDGE_COORDINATION": "rabbitmq", "BRIDGE_AMQP_URL": amqp_url}
    parser = _parser()
    out = io.StringIO()
    args = parser.parse_args(["positions", "set", endpoint, "/event/A", "42"])
    assert await asyncio.to_thread(cli.run, args, env, out) == 0, out.getvalue()
    channel = await connections[0].channel()
    epoch, positions = await read_positions(channel, endpoint)
    assert positions["/event/A"].replay_id == 42
    assert epoch == 1

    out = io.StringIO()
    args = parser.parse_args(["positions", "show", endpoint, "--json"])
    assert await asyncio.to_thread(cli.run, args, env, out) == 0
    assert '"replay_id": 42' in out.getvalue()


async def test_positions_cli_waits_for_the_lease_while_a_replica_holds_it(
    amqp_url: str, connections: list[aiormq.abc.AbstractConnection], endpoint: str
) -> None:
    replica = Lease(endpoint)
    await replica.enter(connections[0])
    assert await holder([replica]) is replica
    with pytest.raises(LeaseBusy, match="holds its lease"):
        await change(amqp_url, endpoint, "/event/A", 7, wait=1.0)
    channel = await connections[1].channel()
    assert await read_positions(channel, endpoint) == (0, {}), "nothing changed"
    await replica.release()
    assert await change(amqp_url, endpoint, "/event/A", 7, wait=WAIT) == 1
