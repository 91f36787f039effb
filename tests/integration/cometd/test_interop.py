"""The client against the real servers, per server and transport (issue 3 §5).

``bayeux_server`` runs cometd-nodejs-server (long-polling), faye (websocket) and faye
(long-polling); the client is pinned to that transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, MutableMapping
from typing import Any

import pytest

from bridge.cometd import (
    AuthExtension,
    Client,
    ClientError,
    ConnectionType,
    Extension,
    TransportTimeoutError,
    events,
)
from tests.fixtures.servers import NodeBayeuxServer

from .conftest import WAIT, Recorder


pytestmark = pytest.mark.integration

CHANNEL = "/test/stream"


def client_for(server: NodeBayeuxServer, recorder: Recorder, **options: Any) -> Client:
    assert server.connection_type is not None
    options.setdefault("connection_timeout", 15.0)
    return Client(server.url, ConnectionType(server.connection_type), listener=recorder, **options)


async def receive_seqs(client: Client, count: int, channel: str = CHANNEL) -> list[int]:
    seqs: list[int] = []
    async with asyncio.timeout(WAIT):
        while len(seqs) < count:
            for message in await client.receive_many(1000):
                assert message["channel"] == channel
                seqs.append(message["data"]["seq"])
    return seqs


async def test_handshake_subscribe_publish_receive_thousands(
    bayeux_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    async with client_for(bayeux_server, recorder) as client:
        assert client.connection_type == bayeux_server.connection_type
        assert client.client_id
        assert not client.closed
        await client.subscribe(CHANNEL)
        assert client.subscriptions == {CHANNEL}

        reply = await client.publish(CHANNEL, {"seq": 0, "from": "client"})
        assert reply["successful"] is True
        async with asyncio.timeout(WAIT):
            echoed = await client.receive()
        assert echoed["data"] == {"seq": 0, "from": "client"}

        published = await bayeux_server.publish(CHANNEL, 5000, size=50)
        seqs = await receive_seqs(client, 5000)
        # Every message exactly once, in order.
        assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))
        assert client.pending_count == 0
        assert not client.has_pending_messages

        await client.unsubscribe(CHANNEL)
        assert client.subscriptions == set()
    assert client.closed
    handshakes = recorder.of(events.Handshaken)
    assert [h.connection_type for h in handshakes] == [bayeux_server.connection_type]


async def test_resubscribes_after_all_sessions_dropped(
    bayeux_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    async with client_for(bayeux_server, recorder) as client:
        await client.subscribe(CHANNEL)
        first_id = client.client_id
        assert await bayeux_server.drop_sessions() == 1
        # A new session, resubscribed, then a successful connect.
        await recorder.wait_count(events.Connected, 2)
        assert client.client_id != first_id
        assert client.subscriptions == {CHANNEL}
        reasons = {e.reason for e in recorder.of(events.Reconnecting)}
        assert reasons <= {"unknown_session", "server_advice", "network", "max_interval"}
        published = await bayeux_server.publish(CHANNEL, 1000)
        seqs = await receive_seqs(client, 1000)
        assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))


async def test_recovers_after_server_restart(
    bayeux_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    async with client_for(bayeux_server, recorder) as client:
        await client.subscribe(CHANNEL)
        await bayeux_server.restart()
        await recorder.wait_count(events.Connected, 2)
        assert client.subscriptions == {CHANNEL}
        published = await bayeux_server.publish(CHANNEL, 1000)
        seqs = await receive_seqs(client, 1000)
        assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))
    assert recorder.count(events.Handshaken) >= 2


async def test_connection_timeout_raises_then_recovers(
    bayeux_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    async with client_for(bayeux_server, recorder, connection_timeout=1.0) as client:
        await client.subscribe(CHANNEL)
        await bayeux_server.stop()
        with pytest.raises(TransportTimeoutError):
            async with asyncio.timeout(WAIT):
                await client.receive()
        assert not client.closed  # still trying in the background
        assert client.state == "reconnecting"
        await bayeux_server.start()
        await recorder.wait_count(events.Connected, 2)
        published = await bayeux_server.publish(CHANNEL, 100)
        seqs = await receive_seqs(client, 100)
        assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))


async def test_connection_timeout_none_retries_forever(
    bayeux_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    async with client_for(bayeux_server, recorder, connection_timeout=None) as client:
        await client.subscribe(CHANNEL)
        receiving = asyncio.create_task(client.receive())
        await bayeux_server.stop()
        # Several failed attempts (with growing backoff) and receive() is still waiting.
        await recorder.wait(lambda: recorder.count(events.Reconnecting) >= 4)
        assert not receiving.done()
        await bayeux_server.start()
        await recorder.wait_count(events.Connected, 2)
        await bayeux_server.publish(CHANNEL, 1)
        async with asyncio.timeout(WAIT):
            message = await receiving
        assert message["channel"] == CHANNEL


async def test_prefetch_cap_pauses_fetching_and_loses_nothing(
    bayeux_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    async with client_for(bayeux_server, recorder, max_pending_count=20) as client:
        await client.subscribe(CHANNEL)
        published = await bayeux_server.publish(CHANNEL, 300, rate=3000)
        await recorder.wait_count(events.FetchPaused, 1)
        assert client.state == "paused"
        paused = recorder.of(events.FetchPaused)[0]
        assert paused.pending_count >= 20
        assert client.pending_count >= 20
        seqs = await receive_seqs(client, 300)
        assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))
        assert client.pending_count == 0
        await recorder.wait_count(events.FetchResumed, 1)


class Recording(Extension):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.incoming_channels: list[str] = []

    async def outgoing(
        self, payload: list[dict[str, Any]], headers: MutableMapping[str, str]
    ) -> None:
        self.log.append(f"out:{self.name}")
        for message in payload:
            if message["channel"] == CHANNEL and isinstance(message.get("data"), dict):
                message["data"]["stamped_by"] = self.name

    async def incoming(
        self, payload: list[dict[str, Any]], headers: Mapping[str, str] | None = None
    ) -> None:
        self.log.append(f"in:{self.name}")
        self.incoming_channels.extend(m["channel"] for m in payload)


class BearerAuth(AuthExtension):
    """Sends ``Authorization: Bearer`` and ``ext.auth.token``; renews from a list of tokens."""

    def __init__(self, tokens: list[str], log: list[str]) -> None:
        self.tokens = tokens
        self.token = tokens.pop(0)
        self.log = log
        self.authenticated = 0

    async def outgoing(
        self, payload: list[dict[str, Any]], headers: MutableMapping[str, str]
    ) -> None:
        self.log.append("out:auth")
        headers["Authorization"] = f"Bearer {self.token}"
        for message in payload:
            message.setdefault("ext", {})["auth"] = {"token": self.token}

    async def incoming(
        self, payload: list[dict[str, Any]], headers: Mapping[str, str] | None = None
    ) -> None:
        self.log.append("in:auth")

    async def authenticate(self) -> None:
        self.authenticated += 1
        self.token = self.tokens.pop(0)


async def test_extensions_run_in_order_on_every_payload(
    bayeux_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    log: list[str] = []
    first, second = Recording("first", log), Recording("second", log)
    auth = BearerAuth(["t1"], log)
    async with client_for(bayeux_server, recorder, extensions=[first, second], auth=auth) as client:
        await client.subscribe(CHANNEL)
        await client.publish(CHANNEL, {"n": 1})
        async with asyncio.timeout(WAIT):
            message = await client.receive()
    # The outgoing extension changed the published data; the server delivered it.
    assert message["data"] == {"n": 1, "stamped_by": "second"}
    assert log[:3] == ["out:first", "out:second", "out:auth"]
    assert [e for e in log if e.startswith("in:")][:3] == ["in:auth", "in:first", "in:second"]
    assert "/meta/handshake" in first.incoming_channels
    assert "/meta/subscribe" in second.incoming_channels


async def test_authenticate_after_token_rejected_then_fresh_handshake(
    bayeux_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    await bayeux_server.set_auth("require", token="t1")
    auth = BearerAuth(["t1", "t2"], [])
    async with client_for(bayeux_server, recorder, auth=auth) as client:
        await client.subscribe(CHANNEL)
        first_id = client.client_id
        # The current token expires: the server rejects the next connect with 401.
        await bayeux_server.set_auth("require", token="t2", expired=["t1"])
        await bayeux_server.drop_sessions()
        await recorder.wait_count(events.Connected, 2)
        assert auth.authenticated == 1
        assert auth.token == "t2"
        assert client.client_id != first_id
        assert recorder.count(events.AuthFailed) >= 1
        published = await bayeux_server.publish(CHANNEL, 200)
        seqs = await receive_seqs(client, 200)
        assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))


async def test_unknown_session_does_not_authenticate(
    bayeux_server: NodeBayeuxServer, recorder: Recorder
) -> None:
    auth = BearerAuth(["t1", "t2"], [])
    async with client_for(bayeux_server, recorder, auth=auth) as client:
        await client.subscribe(CHANNEL)
        await bayeux_server.drop_sessions()
        await recorder.wait_count(events.Connected, 2)
    assert auth.authenticated == 0
    assert recorder.count(events.AuthFailed) == 0


async def test_websocket_only_client_fails_promptly_on_long_polling_server(
    cometd_server: NodeBayeuxServer,
) -> None:
    client = Client(cometd_server.url, ConnectionType.WEBSOCKET)
    with pytest.raises(ClientError, match=r"long-polling.*websocket"):
        async with asyncio.timeout(WAIT):
            await client.open()
    assert client.closed


async def test_default_prefers_websocket_when_offered(
    cometd_server: NodeBayeuxServer, faye_server: NodeBayeuxServer
) -> None:
    async with Client(faye_server.url) as client:
        assert client.connection_type is ConnectionType.WEBSOCKET
    async with Client(cometd_server.url) as client:
        assert client.connection_type is ConnectionType.LONG_POLLING
    prefer_lp = [ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET]
    async with Client(faye_server.url, prefer_lp) as client:
        assert client.connection_type is ConnectionType.LONG_POLLING
