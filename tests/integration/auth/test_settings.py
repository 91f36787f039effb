"""Every auth kind, configured the way the daemon reads it (environment variables, ``_FILE``
secrets), against the real token endpoint; the Salesforce CometD URL derived from the reply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.auth import CredentialRegistry, StaticToken, extension_for, resolve_endpoint_url
from bridge.settings import Settings, load_settings
from tests.integration.auth.token_server import TokenServer


pytestmark = pytest.mark.integration


@pytest.fixture
async def registry() -> AsyncIterator[CredentialRegistry]:
    registry = CredentialRegistry()
    yield registry
    await registry.aclose()


def settings_for(
    auth: dict[str, object], url: str | None = "http://127.0.0.1:1/cometd"
) -> Settings:
    endpoint: dict[str, object] = {"channels": ["/event/Order__e"], "auth": auth}
    if url is not None:
        endpoint["url"] = url
    env = {"BRIDGE_ENDPOINTS": json.dumps({"orders": endpoint})}
    return load_settings(env, secrets_dir=None)


async def header_for(settings: Settings, registry: CredentialRegistry) -> str:
    endpoint = settings.endpoints["orders"]
    extension = extension_for(registry, endpoint.auth, "orders")
    assert extension is not None
    headers: dict[str, str] = {}
    await extension.outgoing([{"channel": "/meta/handshake"}], headers)
    return headers["Authorization"]


async def test_none_has_no_extension(registry: CredentialRegistry) -> None:
    settings = settings_for({"kind": "none"})
    assert extension_for(registry, settings.endpoints["orders"].auth, "orders") is None
    assert len(registry) == 0


async def test_bearer_from_file(registry: CredentialRegistry, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("static-bearer-token\n")
    settings = settings_for({"kind": "bearer", "token_file": str(secret)})
    assert await header_for(settings, registry) == "Bearer static-bearer-token"
    extension = extension_for(registry, settings.endpoints["orders"].auth, "orders")
    assert extension is not None
    assert isinstance(extension.credential.source, StaticToken)


@pytest.mark.parametrize("client_auth", ["body", "basic"])
async def test_client_credentials(
    registry: CredentialRegistry, token_server: TokenServer, client_auth: str
) -> None:
    settings = settings_for(
        {
            "kind": "oauth2_client_credentials",
            "token_url": token_server.token_url,
            "client_id": token_server.client_id,
            "client_secret": token_server.client_secret,
            "scope": "streaming",
            "client_auth": client_auth,
        }
    )
    header = await header_for(settings, registry)
    assert token_server.token_valid(header.removeprefix("Bearer "))


async def test_refresh_token_from_file(
    registry: CredentialRegistry, token_server: TokenServer, tmp_path: Path
) -> None:
    secret = tmp_path / "refresh"
    secret.write_text(token_server.refresh_token)
    settings = settings_for(
        {
            "kind": "oauth2_refresh_token",
            "token_url": token_server.token_url,
            "client_id": token_server.client_id,
            "refresh_token_file": str(secret),
        }
    )
    header = await header_for(settings, registry)
    assert token_server.token_valid(header.removeprefix("Bearer "))
    assert token_server.last_form["refresh_token"] == token_server.refresh_token


async def test_salesforce_jwt_derives_the_cometd_url(
    registry: CredentialRegistry, token_server: TokenServer, rsa_pem: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "server.key"
    key_file.write_text(rsa_pem)
    settings = settings_for(
        {
            "kind": "salesforce_jwt",
            "login_url": token_server.url,
            "client_id": token_server.client_id,
            "username": token_server.jwt_username,
            "private_key_file": str(key_file),
            "token_lifetime": 900,
        },
        url=None,
    )
    endpoint = settings.endpoints["orders"]
    extension = extension_for(registry, endpoint.auth, "orders")
    assert extension is not None

    url = await resolve_endpoint_url(endpoint, extension)

    assert url == f"{token_server.instance_url}/cometd/{endpoint.api_version}"
    assert token_server.errors == []
    token = extension.credential.token
    assert token is not None
    assert token.lifetime == pytest.approx(900)
    assert token_server.last_assertion["aud"] == token_server.url
