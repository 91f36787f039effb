"""Token endpoints that would drive a naive client into a hot loop, counted at a real endpoint.

A reply whose ``expires_in`` is 0, negative, NaN, infinite, absurdly large or not a number makes
every token "expired on arrival" (or never expiring); a CometD server that rejects every fresh
token asks for a new one on each handshake. In every case the number of token requests over a
window must stay bounded by the minimum interval between requests, not by how fast the client
can ask.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest

from bridge.auth import ClientCredentials, TokenAuthExtension, TokenEndpointUnavailable
from tests.integration.auth.conftest import MakeCredential
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration

WINDOW = 2.0  # seconds of counting: a window, not synchronisation
MIN_INTERVAL = 0.5
DEFAULT_LIFETIME = 600.0


def source_for(server: TokenServer) -> ClientCredentials:
    return ClientCredentials(
        server.token_url,
        server.client_id,
        server.client_secret,
        default_lifetime=DEFAULT_LIFETIME,
    )


async def use_tokens_for(extension: TokenAuthExtension, seconds: float) -> int:
    """Ask for a token for every request, as a client streaming flat out does; return how many
    requests were sent."""
    sent = 0

    async def loop() -> None:
        nonlocal sent
        while True:
            await extension.outgoing([{"channel": "/meta/connect"}], {})
            sent += 1
            await asyncio.sleep(0)  # let the refresher and the token endpoint run

    task = asyncio.create_task(loop())
    await asyncio.sleep(seconds)  # the counting window
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return sent


@pytest.mark.parametrize(
    "expires_in",
    [0, -30, math.nan, math.inf, -math.inf, 1e300, "soon", "NaN", True, [60]],
    ids=repr,
)
async def test_unusable_lifetime_falls_back_to_the_default(
    expires_in: Any,
    token_server: TokenServer,
    make_credential: MakeCredential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    token_server.expires_in = expires_in
    credential = make_credential(source_for(token_server), min_interval=MIN_INTERVAL)
    extension = TokenAuthExtension(credential)

    sent = await use_tokens_for(extension, WINDOW)

    assert sent > 100, "the client was not asking for tokens"
    # Before: a token request per use (thousands in the window). Now one token, used throughout.
    assert token_server.requests == 1, f"{token_server.requests} token requests in {WINDOW}s"
    token = credential.token
    assert token is not None
    assert token.lifetime == pytest.approx(DEFAULT_LIFETIME)
    warnings = [r for r in caplog.records if "expires_in" in r.getMessage()]
    assert warnings
    assert warnings[0].levelno == logging.WARNING
    assert "default lifetime (600s)" in warnings[0].getMessage()


async def test_numeric_string_lifetime_is_still_honoured(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    token_server.expires_in = "3599"  # some endpoints quote it
    credential = make_credential(source_for(token_server))
    token = await credential.get()
    assert token.lifetime == pytest.approx(3599)


async def test_tiny_lifetime_is_bounded_by_the_minimum_interval(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    """A finite, positive but tiny lifetime is honoured, yet cannot outrun the interval."""
    token_server.lifetime = 0.01
    credential = make_credential(source_for(token_server), min_interval=MIN_INTERVAL)
    await use_tokens_for(TokenAuthExtension(credential), WINDOW)
    # One request at once, then at most one per interval.
    bound = 1 + math.ceil(WINDOW / MIN_INTERVAL)
    assert 2 <= token_server.requests <= bound, token_server.requests


async def test_fresh_tokens_rejected_on_arrival_are_bounded(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    """A server that replies 401 to every fresh token: at most one request per interval, and
    the jittered backoff makes later requests sparser still."""
    token_server.lifetime = 600.0
    credential = make_credential(
        source_for(token_server), min_interval=MIN_INTERVAL, backoff_initial=0.1, backoff_max=2.0
    )
    extension = TokenAuthExtension(credential)
    rejections = 0

    async def reject_every_token() -> None:
        nonlocal rejections
        while True:
            await extension.outgoing([{"channel": "/meta/handshake"}], {})
            rejections += 1
            await extension.authenticate()

    task = asyncio.create_task(reject_every_token())
    await asyncio.sleep(WINDOW)  # the counting window
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    bound = 1 + math.ceil(WINDOW / MIN_INTERVAL)
    assert 2 <= token_server.requests <= bound, token_server.requests
    assert rejections <= token_server.requests


async def test_failures_respect_the_minimum_interval(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    token_server.fail_with(503, times=None)
    credential = make_credential(
        source_for(token_server), min_interval=MIN_INTERVAL, backoff_initial=0.01, backoff_max=0.02
    )

    async def insist() -> None:
        while True:
            with pytest.raises(TokenEndpointUnavailable):
                await credential.get()

    callers = [asyncio.create_task(insist()) for _ in range(5)]
    await asyncio.sleep(WINDOW)  # the counting window
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    # A backoff far below the interval must not shorten it.
    assert 2 <= token_server.requests <= 1 + math.ceil(WINDOW / MIN_INTERVAL)


async def test_info_line_only_when_the_token_changes(
    token_server: TokenServer,
    make_credential: MakeCredential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.auth")
    token_server.lifetime = 600.0
    token_server.same_token = True  # a caching endpoint: the same token until it expires
    credential = make_credential(source_for(token_server), backoff_initial=0.05)
    first = await credential.get()
    for _ in range(3):
        await credential.invalidate(credential.token)
    assert token_server.requests == 4
    assert credential.token is not None
    assert credential.token.access_token.get_secret_value() == first.access_token.get_secret_value()
    info = [r for r in caplog.records if r.levelno == logging.INFO and "token" in r.getMessage()]
    assert len(info) == 1, [r.getMessage() for r in info]

    token_server.same_token = False
    await credential.invalidate(credential.token)
    info = [r for r in caplog.records if r.levelno == logging.INFO and "token" in r.getMessage()]
    assert len(info) == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversized_reply_is_refused_with_a_clear_error(
    chunked: bool, token_server: TokenServer, make_credential: MakeCredential
) -> None:
    token_server.padding = 4 * 1024 * 1024
    token_server.chunked = chunked
    credential = make_credential(source_for(token_server))
    with pytest.raises(TokenEndpointUnavailable) as caught:
        await credential.get()
    assert "exceeds the 262144-byte limit" in str(caught.value)

    token_server.padding = 1000  # a large but plausible reply still works
    credential = make_credential(source_for(token_server))
    token = await credential.get()
    assert token_server.token_valid(token.access_token.get_secret_value())
