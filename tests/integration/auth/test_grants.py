"""Every grant against a real token endpoint: what goes on the wire, what comes back."""

from __future__ import annotations

import base64
import itertools
import stat
import time
from pathlib import Path

import pytest

from bridge.auth import (
    ClientCredentials,
    RefreshToken,
    SalesforceJwt,
    TokenRejected,
    TokenSource,
)
from bridge.auth.factory import build_source
from bridge.settings import SalesforceJwtAuth
from tests.integration.auth.conftest import MakeCredential
from tests.integration.auth.recording import RecordingHooks
from tests.integration.auth.token_server import JWT_BEARER_GRANT, TokenServer


pytestmark = pytest.mark.integration


async def test_client_credentials_in_body(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    source = ClientCredentials(
        token_server.token_url, token_server.client_id, token_server.client_secret, scope="stream"
    )
    token = await make_credential(source).get()

    assert token_server.token_valid(token.access_token.get_secret_value())
    assert token_server.last_form == {
        "grant_type": "client_credentials",
        "scope": "stream",
        "client_id": token_server.client_id,
        "client_secret": token_server.client_secret,
    }
    assert "Authorization" not in token_server.last_headers
    assert token.expires_at is not None
    assert token.expires_at - token.issued_at == pytest.approx(token_server.lifetime)


async def test_client_credentials_with_http_basic(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    # A secret with characters RFC 6749 §2.3.1 form-encodes before base64.
    token_server.client_secret = "p@ss:wörd+/="
    source = ClientCredentials(
        token_server.token_url,
        token_server.client_id,
        token_server.client_secret,
        client_auth="basic",
    )
    token = await make_credential(source).get()

    assert token_server.token_valid(token.access_token.get_secret_value())
    assert "client_secret" not in token_server.last_form
    assert "client_id" not in token_server.last_form
    header = token_server.last_headers["Authorization"]
    assert header.startswith("Basic ")
    assert ":" in base64.b64decode(header[6:]).decode()


async def test_wrong_client_secret_is_rejected_as_invalid_client(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    source = ClientCredentials(token_server.token_url, token_server.client_id, "wrong")
    with pytest.raises(TokenRejected) as caught:
        await make_credential(source).get()
    assert caught.value.error == "invalid_client"
    assert caught.value.status == 401


async def test_refresh_token_follows_rotation(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    token_server.rotate_refresh_tokens = True
    source = RefreshToken(
        token_server.token_url, token_server.client_id, token_server.refresh_token
    )
    credential = make_credential(source)

    first = await credential.get()
    # Each forced refresh must use the refresh token the previous reply rotated in: the
    # server has revoked the older one, so reusing it would fail with invalid_grant.
    second = await credential.invalidate(first)
    third = await credential.invalidate(second)

    tokens = {t.access_token.get_secret_value() for t in (first, second, third)}
    assert len(tokens) == 3
    assert source.rotations == 3
    assert token_server.refresh_token_valid(source.refresh_token.get_secret_value())
    assert token_server.by_grant == {"refresh_token": 3}


async def test_refresh_token_revoked_is_invalid_grant(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    source = RefreshToken(token_server.token_url, token_server.client_id, "revoked-long-ago")
    with pytest.raises(TokenRejected) as caught:
        await make_credential(source).get()
    assert caught.value.error == "invalid_grant"


async def test_salesforce_jwt_bearer(
    token_server: TokenServer, make_credential: MakeCredential, rsa_pem: str
) -> None:
    source = SalesforceJwt(
        token_server.url,
        token_server.client_id,
        token_server.jwt_username,
        rsa_pem,
        token_lifetime=1800,
    )
    credential = make_credential(source)
    before = time.time()
    token = await credential.get()

    # The endpoint verified the RS256 signature with the public key and every claim.
    assert token_server.errors == []
    assert token_server.by_grant == {JWT_BEARER_GRANT: 1}
    claims = token_server.last_assertion
    assert claims["iss"] == token_server.client_id
    assert claims["sub"] == token_server.jwt_username
    assert claims["aud"] == token_server.url
    assert before < claims["exp"] <= time.time() + SalesforceJwt.ASSERTION_LIFETIME
    # No expires_in in the reply: the configured lifetime applies.
    assert token.expires_at is not None
    assert token.expires_at - token.issued_at == pytest.approx(1800)
    assert credential.instance_url == token_server.instance_url


async def test_salesforce_jwt_signed_with_another_key_is_refused(
    token_server: TokenServer, make_credential: MakeCredential
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    source = SalesforceJwt(token_server.url, token_server.client_id, token_server.jwt_username, pem)
    with pytest.raises(TokenRejected):
        await make_credential(source).get()
    assert token_server.errors == ["bad signature"]


async def test_salesforce_jwt_audience_from_the_settings_is_sent_exactly(
    token_server: TokenServer, make_credential: MakeCredential, rsa_pem: str
) -> None:
    # The token request goes to one URL (a My Domain) while the server expects another
    # audience, compared exactly as Salesforce does: no trailing slash from URL parsing.
    token_server.jwt_audience = "https://test.salesforce.com"
    common = {
        "kind": "salesforce_jwt",
        "login_url": token_server.url,
        "client_id": token_server.client_id,
        "username": token_server.jwt_username,
        "private_key": rsa_pem,
    }
    without = build_source(SalesforceJwtAuth.model_validate(common))
    assert without is not None
    with pytest.raises(TokenRejected):
        await make_credential(without).get()
    assert token_server.errors == ["aud is not the expected audience"]

    configured = SalesforceJwtAuth.model_validate(
        {**common, "audience": "https://test.salesforce.com"}
    )
    source = build_source(configured)
    assert source is not None
    token = await make_credential(source).get()
    assert token_server.token_valid(token.access_token.get_secret_value())
    assert token_server.last_assertion["aud"] == "https://test.salesforce.com"
    assert token_server.errors == ["aud is not the expected audience"], "no new refusal"


@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token", "jwt"])
async def test_proactive_refresh_before_expiry(
    grant: str, token_server: TokenServer, make_credential: MakeCredential, rsa_pem: str
) -> None:
    # Refreshed at 2.8-3.2 s: the "before expiry" check keeps a margin of about a second.
    token_server.lifetime = 4.0
    token_server.rotate_refresh_tokens = True
    source: TokenSource
    if grant == "client_credentials":
        source = ClientCredentials(
            token_server.token_url, token_server.client_id, token_server.client_secret
        )
    elif grant == "refresh_token":
        source = RefreshToken(
            token_server.token_url, token_server.client_id, token_server.refresh_token
        )
    else:
        source = SalesforceJwt(
            token_server.url,
            token_server.client_id,
            token_server.jwt_username,
            rsa_pem,
            token_lifetime=token_server.lifetime,
        )
    hooks = RecordingHooks()
    credential = make_credential(source, hooks=hooks)
    await credential.get()

    # Nobody asks for a token again: the timer alone must renew it, several times.
    await hooks.wait_for(lambda: hooks.count("success") >= 3)

    issued = token_server.issued
    assert len(issued) >= 3
    for previous, following in itertools.pairwise(issued):
        assert previous.expires_at is not None
        assert following.issued_at < previous.expires_at, "refreshed only after expiry"
    assert hooks.count("failure") == 0
    assert [e for _, e in hooks.expiries][:3] == pytest.approx(
        [i.expires_at for i in issued[:3]], abs=0.5
    )


async def test_rotated_refresh_token_survives_a_restart(
    token_server: TokenServer, make_credential: MakeCredential, tmp_path: Path
) -> None:
    token_server.rotate_refresh_tokens = True
    store = tmp_path / "state" / "refresh.json"
    url, client_id = token_server.token_url, token_server.client_id
    configured = token_server.refresh_token

    first_run = RefreshToken(url, client_id, configured, store=store)
    await make_credential(first_run).get()
    assert first_run.rotations == 1
    assert stat.S_IMODE(store.stat().st_mode) == 0o600

    # A restart with the same configuration: the configured token was revoked by the rotation.
    stale = RefreshToken(url, client_id, configured)
    with pytest.raises(TokenRejected):
        await make_credential(stale).get()
    restarted = RefreshToken(
        token_server.token_url, token_server.client_id, configured, store=store
    )
    token = await make_credential(restarted).get()
    assert token_server.token_valid(token.access_token.get_secret_value())

    # The operator configures a new refresh token: it wins over the stored one.
    replaced = RefreshToken(url, client_id, "new", store=store)
    assert replaced.refresh_token.get_secret_value() == "new"
