"""The Salesforce-like test server itself, spoken to with raw aiohttp (not our client).

These pin the server semantics the no-loss tests rely on: replay ids, replay on subscribe,
the invalid-replay 400, ``403::Unknown client``, the reconnect budget, a restart keeping the
retention buffer, and the ack extension of cometd-nodejs-server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fixtures.raw_bayeux import RawBayeux

from .conftest import SalesforceFactory, SalesforceServer


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"
INVALID = (
    "400::The replayId {{{}}} you provided was invalid. Please provide a valid ID, "
    "-2 to replay all events, or -1 to replay only new events."
)


async def subscribe(raw: RawBayeux, channel: str, replay: int | None) -> dict[str, Any]:
    message: dict[str, Any] = {"channel": "/meta/subscribe", "subscription": channel}
    if replay is not None:
        message["ext"] = {"replay": {channel: replay}}
    return raw.reply_to(await raw.exchange([message]), "/meta/subscribe")


async def replay_handshake(raw: RawBayeux) -> dict[str, Any]:
    reply = await raw.handshake(ext={"replay": True})
    assert reply["successful"], reply
    await raw.connect(timeout=0)
    return reply


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["payload"]["seq"] for e in events]


def replay_ids(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["event"]["replayId"] for e in events]


async def test_handshake_advertises_replay_long_polling_only(
    salesforce_server: SalesforceServer,
) -> None:
    async with RawBayeux(salesforce_server.url) as raw:
        reply = await raw.handshake(ext={"replay": True})
    assert reply["successful"]
    assert reply["ext"] == {"replay": True, "payload.format": True}
    assert reply["supportedConnectionTypes"] == ["long-polling"]


async def test_subscribe_replays_retained_events_after_the_given_id(
    salesforce_server: SalesforceServer,
) -> None:
    await salesforce_server.publish(CHANNEL, 5)
    async with RawBayeux(salesforce_server.url) as raw:
        await replay_handshake(raw)
        assert (await subscribe(raw, CHANNEL, -2))["successful"]
        everything = await asyncio.wait_for(raw.collect(CHANNEL, 5), 20)
    assert seqs(everything) == [1, 2, 3, 4, 5]
    ids = replay_ids(everything)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5

    async with RawBayeux(salesforce_server.url) as raw:
        await replay_handshake(raw)
        assert (await subscribe(raw, CHANNEL, ids[2]))["successful"]
        rest = await asyncio.wait_for(raw.collect(CHANNEL, 2), 20)
        assert seqs(rest) == [4, 5]
        # Live events follow the backlog without a gap or a repeat.
        await salesforce_server.publish(CHANNEL, 2)
        more = await asyncio.wait_for(raw.collect(CHANNEL, 4), 20)
    assert seqs(more) == [4, 5, 6, 7]


async def test_minus_one_and_no_replay_mean_new_events_only(
    salesforce_server: SalesforceServer,
) -> None:
    await salesforce_server.publish(CHANNEL, 3)
    async with RawBayeux(salesforce_server.url) as raw:
        await replay_handshake(raw)
        assert (await subscribe(raw, CHANNEL, -1))["successful"]
        assert (await subscribe(raw, "/event/Other__e", None))["successful"]
        await salesforce_server.publish(CHANNEL, 1)
        await salesforce_server.publish("/event/Other__e", 1)
        events = await asyncio.wait_for(raw.collect(CHANNEL, 1), 20)
        await asyncio.wait_for(raw.collect("/event/Other__e", 1), 20)
    assert seqs(events) == [4]


async def test_id_older_than_retention_is_rejected_with_the_salesforce_400(
    salesforce_server: SalesforceServer,
) -> None:
    await salesforce_server.publish(CHANNEL, 10)
    retention = await salesforce_server.set_retention(3)
    oldest = retention[CHANNEL]["oldest"]
    async with RawBayeux(salesforce_server.url) as raw:
        await replay_handshake(raw)
        stale = oldest - 5
        reply = await subscribe(raw, CHANNEL, stale)
        assert reply["successful"] is False
        assert reply["error"] == INVALID.format(stale)
        assert reply["subscription"] == CHANNEL
        # Not subscribed: a live event does not arrive.
        assert (await salesforce_server.stats())["subscriptions"].get(CHANNEL) is None
        # The id just before the oldest retained one is still valid: nothing is lost from it.
        reply = await subscribe(raw, CHANNEL, oldest - 1)
        assert reply["successful"], reply
        events = await asyncio.wait_for(raw.collect(CHANNEL, 3), 20)
    assert seqs(events) == [8, 9, 10]
    stats = await salesforce_server.stats()
    assert stats["invalid_replays"] == 1


async def test_id_never_issued_is_invalid(salesforce_server: SalesforceServer) -> None:
    await salesforce_server.publish(CHANNEL, 1)
    async with RawBayeux(salesforce_server.url) as raw:
        await replay_handshake(raw)
        reply = await subscribe(raw, CHANNEL, 10**9)
    assert reply["error"] == INVALID.format(10**9)


async def test_dropped_session_gets_403_unknown_client_with_handshake_advice(
    salesforce_server: SalesforceServer,
) -> None:
    async with RawBayeux(salesforce_server.url) as raw:
        await replay_handshake(raw)
        assert await salesforce_server.drop_sessions() == 1
        reply = await raw.connect()
    assert reply["successful"] is False
    assert reply["error"] == "403::Unknown client"
    assert reply["advice"] == {"reconnect": "handshake", "interval": 0}


async def test_session_expires_after_the_reconnect_budget(
    salesforce_factory: SalesforceFactory,
) -> None:
    server = salesforce_factory(max_interval=300)
    async with RawBayeux(server.url) as raw:
        await replay_handshake(raw)
        assert (await server.stats())["sessions"] == 1
        # No /meta/connect after that response: the server forgets the session on its own.
        # (It is another process with no push channel, so poll its stats, bounded.)
        async with asyncio.timeout(20):
            while (await server.stats())["sessions"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        reply = await raw.connect()
    assert reply["error"] == "403::Unknown client"


async def test_restart_keeps_the_retention_buffer(salesforce_server: SalesforceServer) -> None:
    await salesforce_server.publish(CHANNEL, 4)
    before = (await salesforce_server.stats())["retention"][CHANNEL]
    await salesforce_server.restart()
    stats = await salesforce_server.stats()
    assert stats["sessions"] == 0
    assert stats["retention"][CHANNEL] == before
    # Sequence numbers and replay ids continue after the restart.
    await salesforce_server.publish(CHANNEL, 1)
    async with RawBayeux(salesforce_server.url) as raw:
        await replay_handshake(raw)
        await subscribe(raw, CHANNEL, before["newest"] - 1)
        events = await asyncio.wait_for(raw.collect(CHANNEL, 2), 20)
    assert seqs(events) == [4, 5]
    assert replay_ids(events) == [before["newest"], before["newest"] + 1]


async def test_ack_extension_resends_until_acknowledged(
    salesforce_factory: SalesforceFactory,
) -> None:
    server = salesforce_factory(ack=1)
    async with RawBayeux(server.url) as raw:
        reply = await raw.handshake(ext={"ack": True, "replay": True})
        assert reply["ext"]["ack"] is True
        first = raw.reply_to(await raw.exchange([_connect(raw, 0, timeout=0)]), "/meta/connect")
        assert isinstance(first["ext"]["ack"], int)
        await subscribe(raw, CHANNEL, -1)
        await server.publish(CHANNEL, 3)

        received = await raw.exchange([_connect(raw, first["ext"]["ack"])])
        batch = raw.reply_to(received, "/meta/connect")["ext"]["ack"]
        assert seqs([m for m in received if m.get("channel") == CHANNEL]) == [1, 2, 3]

        # Not acknowledging the batch: the server sends the same messages again.
        received = await raw.exchange([_connect(raw, first["ext"]["ack"])])
        batch2 = raw.reply_to(received, "/meta/connect")["ext"]["ack"]
        assert batch2 > batch
        assert seqs([m for m in received if m.get("channel") == CHANNEL]) == [1, 2, 3]

        # Acknowledged: they are gone; the next reply carries only new ones.
        await server.publish(CHANNEL, 1)
        received = await raw.exchange([_connect(raw, batch2)])
        assert seqs([m for m in received if m.get("channel") == CHANNEL]) == [4]


def _connect(raw: RawBayeux, ack: int, timeout: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "channel": "/meta/connect",
        "connectionType": "long-polling",
        "ext": {"ack": ack},
    }
    if timeout is not None:
        message["advice"] = {"timeout": timeout}
    return message


async def test_replay_off_ignores_ext(salesforce_factory: SalesforceFactory) -> None:
    server = salesforce_factory(replay=0)
    await server.publish(CHANNEL, 2)
    async with RawBayeux(server.url) as raw:
        reply = await raw.handshake(ext={"replay": True})
        assert "replay" not in reply.get("ext", {})
        await raw.connect(timeout=0)
        assert (await subscribe(raw, CHANNEL, -2))["successful"]
        await server.publish(CHANNEL, 1)
        events = await asyncio.wait_for(raw.collect(CHANNEL, 1), 20)
    assert seqs(events) == [3]
