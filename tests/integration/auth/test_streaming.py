"""A client streams across many token lifetimes from real CometD servers that reject expired
tokens (issue 5 "Tests"): proactive refresh loses nothing; a refresh outage long enough to let
the token expire is recovered by refresh + fresh handshake.

The servers are the harness's cometd-nodejs-server and faye, preloaded with
tests/servers/auth_ttl.js so they accept exactly the unexpired tokens the test token endpoint
issued (several at once, as a real resource server would).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from bridge.auth import ClientCredentials, Credential, Placement, TokenAuthExtension
from bridge.cometd import Client, ConnectionType, events
from tests.fixtures.servers import SERVERS_DIR, NodeBayeuxServer
from tests.integration.auth.recording import Events
from tests.integration.auth.token_server import TokenServer


pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHANNEL = "/auth/stream"
WAIT = 60.0  # upper bound of every wait; never a sleep
LIFETIME = 6.0  # seconds a token lives: refreshed at 4.2-4.8 s, seconds before it expires
RATE = 100  # messages per second, steady
COUNT = 1500  # 15 s of streaming: more than two token lifetimes

# (server, transport, placement). WebSocket carries headers only on the upgrade, so a server that
# checks every message needs the token inside the messages there: placement "ext".
SETUPS = [
    ("cometd", "long-polling", "header"),
    ("faye", "long-polling", "header"),
    ("faye", "websocket", "ext"),
    ("cometd", "long-polling", "ext"),
]


async def control(server: NodeBayeuxServer, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session,
        session.request(method, f"{server.control_url}/{path}", json=body) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.fixture(params=SETUPS, ids=["-".join(s) for s in SETUPS])
async def setup(
    request: pytest.FixtureRequest,
    node_server_factory: Callable[..., NodeBayeuxServer],
    token_server: TokenServer,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[NodeBayeuxServer, str, Placement]:
    kind, transport, placement = request.param
    monkeypatch.setenv("NODE_OPTIONS", f"--require {SERVERS_DIR / 'auth_ttl.js'}")
    server = await asyncio.to_thread(node_server_factory, kind, connection_type=transport)
    token_server.lifetime = LIFETIME
    await control(server, "POST", "auth", {"mode": "hmac", "key": token_server.hmac_key.hex()})
    return server, transport, placement


@pytest.fixture
async def credential(token_server: TokenServer) -> AsyncIterator[Credential]:
    source = ClientCredentials(
        token_server.token_url, token_server.client_id, token_server.client_secret
    )
    credential = Credential("stream", source, backoff_initial=0.2, backoff_max=0.5)
    yield credential
    await credential.aclose()


async def receive_seqs(client: Client, count: int) -> list[int]:
    seqs: list[int] = []
    async with asyncio.timeout(WAIT):
        while len(seqs) < count:
            seqs.extend(m["data"]["seq"] for m in await client.receive_many(1000))
    return seqs


async def test_stream_across_token_lifetimes_loses_nothing(
    setup: tuple[NodeBayeuxServer, str, Placement],
    credential: Credential,
    token_server: TokenServer,
) -> None:
    server, transport, placement = setup
    recorded = Events()
    auth = TokenAuthExtension(credential, placement)
    async with Client(
        server.url, ConnectionType(transport), auth=auth, listener=recorded
    ) as client:
        await client.subscribe(CHANNEL)
        # One proactive refresh fails too: its retry, after a short backoff, still beats expiry.
        token_server.fail_with(503, times=1)
        await server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
        seqs = await receive_seqs(client, COUNT)

    assert seqs == list(range(1, COUNT + 1)), "messages lost, duplicated or reordered"
    # The stream crossed several expiries, each token replaced before it expired ...
    assert len(token_server.issued) >= 3
    assert token_server.requests == len(token_server.issued) + 1  # the one failed request
    stats = await server.stats()
    assert stats["auth"]["rejected"] == 0
    assert stats["auth"]["expired"] == 0
    # ... so the session was never lost and the client never had to re-authenticate.
    assert recorded.count(events.Handshaken) == 1
    assert recorded.count(events.AuthFailed) == 0


async def test_token_endpoint_outage_past_expiry_never_sends_an_expired_token(
    setup: tuple[NodeBayeuxServer, str, Placement],
    credential: Credential,
    token_server: TokenServer,
) -> None:
    server, transport, placement = setup
    recorded = Events()
    auth = TokenAuthExtension(credential, placement)
    async with Client(
        server.url, ConnectionType(transport), auth=auth, listener=recorded
    ) as client:
        await client.subscribe(CHANNEL)
        # The token endpoint goes down for longer than the token lives: the proactive refresh
        # fails, the token expires, and the client reports the connection down (it cannot
        # send) instead of sending a token it knows is expired.
        token_server.fail_with(503, times=None)
        await recorded.wait_for(lambda: recorded.count(events.Reconnecting) >= 1)
        token_server.recover()
        await recorded.wait_for(lambda: recorded.count(events.Connected) >= 2)

        published = await server.publish(CHANNEL, 200)
        seqs = await receive_seqs(client, 200)
    assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))
    assert credential.consecutive_failures == 0
    stats = await server.stats()
    assert stats["auth"]["expired"] == 0
    reconnecting = [e for e in recorded.seen if isinstance(e, events.Reconnecting)]
    assert reconnecting[0].reason == "network"
    assert reconnecting[0].error is not None
    assert "503" in reconnecting[0].error
    assert token_server.client_secret not in reconnecting[0].error


async def test_revoked_token_refreshes_once_then_fresh_handshake(
    setup: tuple[NodeBayeuxServer, str, Placement],
    credential: Credential,
    token_server: TokenServer,
) -> None:
    server, transport, placement = setup
    # Long-lived tokens: the rejection, not a proactive refresh, must be what renews this one.
    token_server.lifetime = 60.0
    recorded = Events()
    auth = TokenAuthExtension(credential, placement)
    async with Client(
        server.url, ConnectionType(transport), auth=auth, listener=recorded
    ) as client:
        await client.subscribe(CHANNEL)
        first_client_id = client.client_id
        requests_before = token_server.requests
        # Every token issued so far is revoked (the signing key changes): the server rejects
        # the next connect with 401::Authentication invalid and drops the session.
        token_server.hmac_key = bytes(reversed(token_server.hmac_key))
        await control(server, "POST", "auth", {"mode": "hmac", "key": token_server.hmac_key.hex()})
        # Connected follows the resubscription: publishing before it would race it.
        await recorded.wait_for(lambda: recorded.count(events.Connected) >= 2)
        assert recorded.count(events.Handshaken) == 2
        assert client.client_id != first_client_id

        published = await server.publish(CHANNEL, 200)
        seqs = await receive_seqs(client, 200)
    assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))
    assert recorded.count(events.AuthFailed) == 1
    reasons = [e.reason for e in recorded.seen if isinstance(e, events.Reconnecting)]
    assert reasons == ["auth"]
    # Exactly one token request, for the rejection.
    assert token_server.requests - requests_before == 1
