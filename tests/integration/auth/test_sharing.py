"""Single-flight and backoff, counted at a real token endpoint."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.auth import (
    ClientCredentials,
    CredentialRegistry,
    RefreshToken,
    TokenAuthExtension,
    TokenEndpointUnavailable,
    TokenError,
    TokenRejected,
    credential_for,
)
from bridge.settings import OAuth2ClientCredentialsAuth
from tests.integration.auth.conftest import MakeCredential
from tests.integration.auth.recording import RecordingHooks
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration

CALLERS = 50


def client_credentials(server: TokenServer, secret: str | None = None) -> ClientCredentials:
    return ClientCredentials(
        server.token_url, server.client_id, secret or server.client_secret, scope="s"
    )


async def test_many_concurrent_callers_share_one_request(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    credential = make_credential(client_credentials(token_server))
    token_server.hold()
    callers = [asyncio.create_task(credential.get()) for _ in range(CALLERS)]
    await token_server.wait_held(1)
    token_server.release()
    tokens = await asyncio.gather(*callers)

    assert token_server.requests == 1
    assert len({id(t) for t in tokens}) == 1


async def test_concurrent_rejections_cost_one_request(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    """N endpoints told "401" at once for the same token: one new token, not N."""
    credential = make_credential(client_credentials(token_server))
    extensions = [TokenAuthExtension(credential) for _ in range(CALLERS)]
    for extension in extensions:
        await extension.outgoing([{"channel": "/meta/connect"}], {})
    assert token_server.requests == 1

    token_server.hold()
    rejections = [asyncio.create_task(e.authenticate()) for e in extensions]
    await token_server.wait_held(1)
    token_server.release()
    await asyncio.gather(*rejections)
    # A straggler reporting the old token after the refresh finished must not refresh again.
    await extensions[0].authenticate()

    assert token_server.requests == 2
    headers: dict[str, str] = {}
    await extensions[-1].outgoing([], headers)
    assert headers["Authorization"] == f"Bearer {token_server.issued[-1].token}"


async def test_registry_shares_a_credential_between_endpoints(
    token_server: TokenServer,
) -> None:
    base = {
        "kind": "oauth2_client_credentials",
        "token_url": token_server.token_url,
        "client_id": token_server.client_id,
        "client_secret": token_server.client_secret,
    }
    header = OAuth2ClientCredentialsAuth.model_validate(base)
    in_ext = OAuth2ClientCredentialsAuth.model_validate({**base, "placement": "ext"})
    other = OAuth2ClientCredentialsAuth.model_validate({**base, "client_id": "someone-else"})
    registry = CredentialRegistry()
    try:
        first = credential_for(registry, header, "orders")
        second = credential_for(registry, in_ext, "invoices")
        third = credential_for(registry, other, "audit")
        assert first is second
        assert first is not third
        assert first is not None
        assert first.name == "orders"  # the first endpoint using it names it
        await asyncio.gather(first.get(), second.get())  # type: ignore[union-attr]
        assert token_server.requests == 1
    finally:
        await registry.aclose()


async def test_endpoint_down_backs_off_instead_of_hot_looping(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    hooks = RecordingHooks()
    credential = make_credential(
        client_credentials(token_server), hooks=hooks, backoff_initial=0.1, backoff_max=0.4
    )
    token_server.fail_with(503, times=None)

    async def insist() -> None:
        # Callers that retry as fast as they can, as a naive client would.
        while True:
            with pytest.raises(TokenEndpointUnavailable):
                await credential.get()

    callers = [asyncio.create_task(insist()) for _ in range(10)]
    # The observation window: wait until 5 failures were counted, then look at the count of
    # requests. Every request has to wait at least half its backoff (0.05, 0.1, 0.2, 0.2 s...).
    await hooks.wait_for(lambda: hooks.count("failure") >= 5)
    requests_after_five = token_server.requests
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)

    assert requests_after_five == 5, "callers made requests of their own instead of sharing"
    assert credential.consecutive_failures == 5

    token_server.recover()
    token = await credential.get()
    assert token_server.token_valid(token.access_token.get_secret_value())
    assert credential.consecutive_failures == 0
    assert hooks.count("success") == 1


async def test_backoff_window_bounds_request_rate(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    """Over a fixed window, a down endpoint sees O(log) requests, not one per caller retry."""
    credential = make_credential(
        client_credentials(token_server), backoff_initial=0.1, backoff_max=0.4
    )
    token_server.fail_with(503, times=None)
    retries = 0

    async def insist() -> None:
        nonlocal retries
        while True:
            retries += 1
            with pytest.raises(TokenError):
                await credential.get()

    callers = [asyncio.create_task(insist()) for _ in range(10)]
    await asyncio.sleep(1.5)  # the counting window, not synchronisation
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)

    # Minimum delays 0.05, 0.1, 0.2, 0.2, ... s → at most 9 requests in 1.5 s.
    assert 2 <= token_server.requests <= 9
    assert retries >= token_server.requests


async def test_proactive_refresh_failure_keeps_the_valid_token_and_retries(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    token_server.lifetime = 6.0  # two failed refreshes and the retry still seconds before expiry
    hooks = RecordingHooks()
    credential = make_credential(
        client_credentials(token_server), hooks=hooks, backoff_initial=0.1, backoff_max=0.2
    )
    first = await credential.get()
    token_server.fail_with(503, times=2)

    await hooks.wait_for(lambda: hooks.count("failure") == 2)
    # The refresh failed, but the token has time left: callers keep using it meanwhile.
    assert await credential.get() is first
    await hooks.wait_for(lambda: hooks.count("success") == 2)
    second = await credential.get()
    assert second is not first
    assert token_server.token_valid(second.access_token.get_secret_value())


async def test_invalid_client_is_logged_without_the_secret(
    token_server: TokenServer,
    make_credential: MakeCredential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-but-still-secret-value"
    credential = make_credential(client_credentials(token_server, secret), name="orders")
    with pytest.raises(TokenRejected) as caught:
        await credential.get()

    assert "invalid_client" in caplog.text
    assert "orders" in caplog.text
    assert secret not in caplog.text
    assert secret not in str(caught.value)
    assert secret not in repr(credential)
    assert secret not in repr(credential.source)


async def test_secrets_never_in_logs_or_reprs(
    token_server: TokenServer,
    make_credential: MakeCredential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token_server.rotate_refresh_tokens = True
    source = RefreshToken(
        token_server.token_url,
        token_server.client_id,
        token_server.refresh_token,
        client_secret=token_server.client_secret,
    )
    credential = make_credential(source)
    token = await credential.get()
    await credential.invalidate(token)
    token_server.fail_with(500)
    with pytest.raises(TokenEndpointUnavailable):
        await credential.invalidate(credential.token)

    secrets = [
        token_server.client_secret,
        token_server.refresh_token,
        source.refresh_token.get_secret_value(),
        *(i.token for i in token_server.issued),
    ]
    shown = caplog.text + repr(credential) + repr(source) + repr(token) + str(credential.token)
    for secret in secrets:
        assert secret not in shown
