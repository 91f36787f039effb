"""Each failure reply of issue 5, from the scriptable fake server, with the real client and a
real token endpoint: the right action (token refresh or not), bounded requests, the limit named.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bridge.auth import (
    ClientCredentials,
    Credential,
    FailureKind,
    TokenAuthExtension,
    classify_failure,
)
from bridge.cometd import Client, ConnectionType, events
from tests.fakes.fake_bayeux import (
    AUTH_INVALID,
    SALESFORCE_UNKNOWN_CLIENT,
    SFDC_CONCURRENT_LIMIT,
    FakeBayeux,
    fail_reply,
    handshake_denied,
)
from tests.integration.auth.recording import Events
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration

WAIT = 30.0


@pytest.fixture
async def auth(token_server: TokenServer) -> AsyncIterator[TokenAuthExtension]:
    source = ClientCredentials(
        token_server.token_url, token_server.client_id, token_server.client_secret
    )
    token_server.lifetime = 600.0  # only failures, never the timer, may trigger a request
    credential = Credential("fake", source, backoff_initial=0.2, backoff_max=0.5, min_interval=0.1)
    yield TokenAuthExtension(credential)
    await credential.aclose()


def client_for(fake: FakeBayeux, auth: TokenAuthExtension, recorded: Events) -> Client:
    return Client(fake.url, ConnectionType.LONG_POLLING, auth=auth, listener=recorded)


async def test_salesforce_handshake_denied_for_401_refreshes_then_handshakes(
    fake_bayeux: FakeBayeux, auth: TokenAuthExtension, token_server: TokenServer
) -> None:
    fake_bayeux.on("/meta/handshake", handshake_denied(AUTH_INVALID), nth=1)
    recorded = Events()
    async with client_for(fake_bayeux, auth, recorded):
        await recorded.wait_for(lambda: recorded.count(events.Connected) >= 1)
    assert token_server.requests == 2  # the first token, and one after the denial
    assert fake_bayeux.count("/meta/handshake") == 2
    assert recorded.count(events.AuthFailed) == 1


async def test_401_on_connect_refreshes_once_and_handshakes_afresh(
    fake_bayeux: FakeBayeux, auth: TokenAuthExtension, token_server: TokenServer
) -> None:
    fake_bayeux.on("/meta/connect", fail_reply(AUTH_INVALID, reconnect="none"), nth=2)
    recorded = Events()
    async with client_for(fake_bayeux, auth, recorded) as client:
        first_id = client.client_id
        await recorded.wait_for(lambda: recorded.count(events.Connected) >= 2)
        assert client.client_id != first_id
    assert token_server.requests == 2
    assert fake_bayeux.count("/meta/handshake") == 2
    reasons = [e.reason for e in recorded.seen if isinstance(e, events.Reconnecting)]
    assert reasons == ["auth"]


async def test_unknown_client_rehandshakes_without_a_token_request(
    fake_bayeux: FakeBayeux, auth: TokenAuthExtension, token_server: TokenServer
) -> None:
    fake_bayeux.on(
        "/meta/connect", fail_reply(SALESFORCE_UNKNOWN_CLIENT, reconnect="handshake"), nth=2
    )
    recorded = Events()
    async with client_for(fake_bayeux, auth, recorded):
        await recorded.wait_for(lambda: recorded.count(events.Connected) >= 2)
    assert token_server.requests == 1
    assert recorded.count(events.AuthFailed) == 0
    kind = classify_failure({"error": SALESFORCE_UNKNOWN_CLIENT}).kind
    assert kind is FailureKind.UNKNOWN_SESSION


async def test_quota_denial_backs_off_without_token_requests(
    fake_bayeux: FakeBayeux, auth: TokenAuthExtension, token_server: TokenServer
) -> None:
    # The session is lost, and the re-handshake is refused for the org's concurrent user limit.
    fake_bayeux.on(
        "/meta/connect", fail_reply(SALESFORCE_UNKNOWN_CLIENT, reconnect="handshake"), nth=2
    )
    fake_bayeux.on("/meta/handshake", handshake_denied(SFDC_CONCURRENT_LIMIT), nth=2, times=100)
    recorded = Events()

    def quota_events() -> list[events.Reconnecting]:
        return [
            e for e in recorded.seen if isinstance(e, events.Reconnecting) and e.reason == "quota"
        ]

    async with client_for(fake_bayeux, auth, recorded):
        await recorded.wait_for(lambda: bool(quota_events()))
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(2.0)  # the counting window, not synchronisation
        handshakes_in_window = fake_bayeux.count("/meta/handshake", since=start)

    # A long backoff: no handshake storm, and never a token refresh for a quota.
    assert handshakes_in_window == 0
    assert quota_events()[0].delay >= 30
    assert token_server.requests == 1
    assert recorded.count(events.AuthFailed) == 0
    # What the daemon labels the limit metric with (the failureReason, not "Handshake denied").
    denial = {
        "error": "403::Handshake denied",
        "ext": {"sfdc": {"failureReason": SFDC_CONCURRENT_LIMIT}},
    }
    failure = classify_failure(denial)
    assert failure.kind is FailureKind.QUOTA
    assert failure.limit == "concurrent_clients"
