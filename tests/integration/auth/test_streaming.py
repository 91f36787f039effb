"""A client streams across many token lifetimes from real CometD servers that reject expired
tokens (issue 5 "Tests"): proactive refresh loses nothing; a refresh outage long enough to let
the token expire is recovered by refresh + fresh handshake.

The servers are the harness's cometd-nodejs-server and faye, preloaded with
tests/servers/auth_ttl.js so they accept exactly the unexpired tokens the test token endpoint
issued (several at once, as a real resource server would).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from bridge.auth import ClientCredentials, Credential, Placement, TokenAuthExtension
from bridge.cometd import Client, ConnectionType, events
from bridge.cometd.exceptions import ServerError
from tests.fixtures.servers import SERVERS_DIR, NodeBayeuxServer
from tests.integration.auth.recording import Events
from tests.integration.auth.token_server import TokenServer


pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHANNEL = "/auth/stream"
WAIT = 60.0  # upper bound of every wait; never a sleep
LIFETIME = 5.0  # seconds a token lives: refreshed at 3.5-4 s, a second or more before expiry
RATE = 100  # messages per second, steady
COUNT = 1100  # 11 s of streaming: more than two token lifetimes

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
    # The minimum interval stays well below the refresh point of these short-lived tokens.
    credential = Credential(
        "stream", source, backoff_initial=0.2, backoff_max=0.5, min_interval=0.5
    )
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


@pytest.fixture
async def cometd_hmac(
    node_server_factory: Callable[..., NodeBayeuxServer],
    token_server: TokenServer,
    monkeypatch: pytest.MonkeyPatch,
) -> NodeBayeuxServer:
    monkeypatch.setenv("NODE_OPTIONS", f"--require {SERVERS_DIR / 'auth_ttl.js'}")
    server = await asyncio.to_thread(node_server_factory, "cometd", connection_type="long-polling")
    await control(server, "POST", "auth", {"mode": "hmac", "key": token_server.hmac_key.hex()})
    return server


async def test_token_endpoint_claiming_zero_lifetime_streams_on_one_token(
    cometd_hmac: NodeBayeuxServer, token_server: TokenServer
) -> None:
    """expires_in 0 (the token really lives a minute): one token request for the whole stream,
    not one per message exchange."""
    token_server.lifetime = 60.0
    token_server.expires_in = 0
    source = ClientCredentials(
        token_server.token_url, token_server.client_id, token_server.client_secret
    )
    credential = Credential("zero", source, min_interval=0.5)
    try:
        async with Client(
            cometd_hmac.url, ConnectionType.LONG_POLLING, auth=TokenAuthExtension(credential)
        ) as client:
            await client.subscribe(CHANNEL)
            published = await cometd_hmac.publish(CHANNEL, 300, rate=150)
            seqs = await receive_seqs(client, 300)
    finally:
        await credential.aclose()
    assert seqs == list(range(published["first_seq"], published["last_seq"] + 1))
    assert token_server.requests == 1, f"{token_server.requests} token requests"


async def test_server_rejecting_every_fresh_token_gets_a_bounded_request_rate(
    cometd_hmac: NodeBayeuxServer, token_server: TokenServer
) -> None:
    """The resource server rejects every token on arrival (401 on each handshake, e.g. a key
    mismatch): token requests stay at most one per minimum interval over the window."""
    await control(cometd_hmac, "POST", "auth", {"mode": "hmac", "key": "00" * 16})
    source = ClientCredentials(
        token_server.token_url, token_server.client_id, token_server.client_secret
    )
    interval, window = 0.5, 3.0
    credential = Credential("refused", source, min_interval=interval, backoff_initial=0.1)
    auth = TokenAuthExtension(credential)
    recorded = Events()
    opens = 0

    async def open_until_it_works() -> None:
        # What a supervisor restarting the endpoint as fast as it can would do.
        nonlocal opens
        while True:
            opens += 1
            with contextlib.suppress(ServerError):
                async with Client(
                    cometd_hmac.url, ConnectionType.LONG_POLLING, auth=auth, listener=recorded
                ):
                    pass

    task = asyncio.create_task(open_until_it_works())
    try:
        await recorded.wait_for(lambda: recorded.count(events.AuthFailed) >= 1)
        first = token_server.requests
        await asyncio.sleep(window)  # the counting window, not synchronisation
        during = token_server.requests - first
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await credential.aclose()
    assert opens >= 2, "the client did not retry"
    assert during <= math.ceil(window / interval) + 1, f"{during} token requests in {window}s"
    stats = await cometd_hmac.stats()
    assert stats["auth"]["rejected"] >= 1
