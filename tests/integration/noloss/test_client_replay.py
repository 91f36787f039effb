"""Replay and ack at the client level: our Client + extensions + PositionKeeper against the
Salesforce-like server (real cometd-nodejs-server). The broker confirm is played by the test,
which confirms exactly the messages it chooses to."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bridge.cometd import Client, ConnectionType, events
from bridge.cometd.exceptions import ServerError
from bridge.cometd.ext import (
    REPLAY_ALL,
    AckExtension,
    ReplayExtension,
    invalid_replay_id,
    replay_id_of,
)
from bridge.positions import PositionKeeper, PositionStore

from .conftest import SalesforceFactory, SalesforceServer


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"
WAIT = 30.0  # bound on every wait for messages


def seq(message: dict[str, Any]) -> int:
    value: int = message["data"]["payload"]["seq"]
    return value


async def receive(client: Client, count: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while len(messages) < count:
            messages.extend(await client.receive_many(count - len(messages)))
    return messages


class Recorder:
    """Client listener: keeps every event, and lets a test await one of a given type."""

    def __init__(self) -> None:
        self.events: list[events.ClientEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: events.ClientEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, kind: type[Any], count: int = 1) -> None:
        async with asyncio.timeout(WAIT):
            while sum(isinstance(e, kind) for e in self.events) < count:
                self._changed.clear()
                await self._changed.wait()


class ObservedAck(AckExtension):
    """The real extension, plus a way to await what it did with each payload."""

    def __init__(self) -> None:
        super().__init__()
        self._payload = asyncio.Event()

    async def incoming(self, payload: Any, headers: Any = None) -> None:
        await super().incoming(payload, headers)
        self._payload.set()

    async def wait_for_duplicates(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.duplicates_dropped < count:
                self._payload.clear()
                await self._payload.wait()


def make_client(
    server: SalesforceServer, keeper: PositionKeeper, listener: Recorder
) -> tuple[Client, ReplayExtension]:
    replay = ReplayExtension(keeper.position, start=REPLAY_ALL)
    client = Client(
        server.url,
        ConnectionType.LONG_POLLING,
        extensions=[replay],
        listener=listener,
        connection_timeout=None,
    )
    return client, replay


async def resume_after(
    server: SalesforceServer, tmp_path: Path, fault: str
) -> tuple[list[int], list[int]]:
    """Receive 1..10, confirm 1..5, inject ``fault``, publish 11..20; return (seqs received
    before the fault, seqs received after it)."""
    keeper = PositionKeeper(PositionStore(tmp_path / "state"), "sf")
    keeper.load()
    recorder = Recorder()
    client, replay = make_client(server, keeper, recorder)
    async with client:
        assert replay.supported is True
        await client.subscribe(CHANNEL)
        await server.publish(CHANNEL, 10)
        before = await receive(client, 10)
        for message in before:
            keeper.received(CHANNEL, replay_id_of(message) or -1)
        for message in before[:5]:
            keeper.confirmed(CHANNEL, replay_id_of(message) or -1)
        # Events 6..10 were received but never confirmed (the bridge "died" with them in flight).
        if fault == "drop":
            assert await server.drop_sessions() == 1
        else:
            await server.restart()
        await recorder.wait_for(events.Handshaken, 2)
        await server.publish(CHANNEL, 10)
        after = await receive(client, 15)
    await keeper.close()
    return [seq(m) for m in before], [seq(m) for m in after]


@pytest.mark.parametrize("fault", ["drop", "restart"])
async def test_resubscribes_from_the_confirmed_position(
    salesforce_server: SalesforceServer, tmp_path: Path, fault: str
) -> None:
    before, after = await resume_after(salesforce_server, tmp_path, fault)
    assert before == list(range(1, 11))
    # Everything after the confirmed position, once, in order: nothing missing.
    assert after == list(range(6, 21))
    subscribes = (await salesforce_server.stats())["subscribes"]
    assert subscribes[-1]["valid"] is True
    assert subscribes[-1]["replay"] not in (-1, -2)


async def test_restart_of_the_bridge_resumes_from_the_stored_position(
    salesforce_server: SalesforceServer, tmp_path: Path
) -> None:
    store = PositionStore(tmp_path / "state")
    keeper = PositionKeeper(store, "sf")
    keeper.load()
    recorder = Recorder()
    client, _ = make_client(salesforce_server, keeper, recorder)
    async with client:
        await client.subscribe(CHANNEL)
        await salesforce_server.publish(CHANNEL, 8)
        for message in await receive(client, 8):
            keeper.received(CHANNEL, replay_id_of(message) or -1)
            if seq(message) <= 3:
                keeper.confirmed(CHANNEL, replay_id_of(message) or -1)
    await keeper.close()

    # A new process: a new keeper reads the file.
    keeper2 = PositionKeeper(store, "sf")
    keeper2.load()
    client2, _ = make_client(salesforce_server, keeper2, Recorder())
    async with client2:
        await client2.subscribe(CHANNEL)
        assert [seq(m) for m in await receive(client2, 5)] == [4, 5, 6, 7, 8]


async def test_position_older_than_retention_fails_with_the_gap_400(
    salesforce_server: SalesforceServer, tmp_path: Path
) -> None:
    await salesforce_server.publish(CHANNEL, 10)
    retention = await salesforce_server.set_retention(2)
    stale = retention[CHANNEL]["oldest"] - 5
    keeper = PositionKeeper(PositionStore(tmp_path), "sf")
    keeper.reset(CHANNEL, stale)
    recorder = Recorder()
    client, _ = make_client(salesforce_server, keeper, recorder)
    async with client:
        with pytest.raises(ServerError) as info:
            await client.subscribe(CHANNEL)
        gap = invalid_replay_id(info.value.response)
        assert gap is not None
        assert gap.channel == CHANNEL
        assert gap.replay_id == stale
        # The daemon's "earliest" policy: forget the position, subscribe from -2.
        keeper.reset(CHANNEL, None)
        await client.subscribe(CHANNEL)
        assert [seq(m) for m in await receive(client, 2)] == [9, 10]
    assert any(isinstance(e, events.SubscriptionFailed) for e in recorder.events)


async def test_ack_extension_against_a_real_server(
    salesforce_factory: SalesforceFactory,
) -> None:
    """Acks are held until confirmed; the server's re-sends are dropped, not delivered twice."""
    server = salesforce_factory(ack=1, replay=0, timeout=300)
    ack = ObservedAck()
    client = Client(
        server.url, ConnectionType.LONG_POLLING, extensions=[ack], connection_timeout=None
    )
    async with client:
        assert ack.supported is True
        await client.subscribe(CHANNEL)
        await server.publish(CHANNEL, 5)
        first = await receive(client, 5)
        assert [seq(m) for m in first] == [1, 2, 3, 4, 5]
        # Nothing confirmed: the server keeps re-sending; the extension removes the repeats.
        await ack.wait_for_duplicates(5)
        tag = ack.ack_tag_of(first[0])
        assert tag is not None, "a message of an acknowledged batch carries its tag"
        batch = tag.batch
        assert ack.acked < batch  # held: the batch with unconfirmed messages is not acked
        assert client.pending_count == 0
        for message in first:
            ack.confirm(ack.ack_tag_of(message))
        assert ack.acked >= batch
        await server.publish(CHANNEL, 2)
        second = await receive(client, 2)
        assert [seq(m) for m in second] == [6, 7]
