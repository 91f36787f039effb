"""From the ``auth`` settings of an endpoint to a shared credential and its extension."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from pathlib import Path

from pydantic import BaseModel, SecretStr

from bridge.auth.credential import Credential, CredentialRegistry
from bridge.auth.extension import TokenAuthExtension
from bridge.auth.hooks import AuthHooks
from bridge.auth.tokens import (
    ClientCredentials,
    RefreshToken,
    SalesforceJwt,
    StaticToken,
    TokenSource,
)
from bridge.settings import (
    AuthSettings,
    BearerAuth,
    Endpoint,
    NoAuth,
    OAuth2ClientCredentialsAuth,
    OAuth2RefreshTokenAuth,
    SalesforceJwtAuth,
)


__all__ = [
    "build_source",
    "credential_key",
    "credential_for",
    "extension_for",
    "resolve_endpoint_url",
    "refresh_token_store",
]

# Fields that say where the token goes, not which credential it is: endpoints that differ only
# in these still share one credential (one token, one refresh).
_PLACEMENT_FIELDS = frozenset({"placement", "ext_path", "name"})


def _required(value: SecretStr | None, field: str) -> SecretStr:
    if value is None:  # settings validation makes this unreachable; keep mypy and us honest
        raise ValueError(f"auth.{field} is required")
    return value


def refresh_token_store(auth: OAuth2RefreshTokenAuth, state_dir: Path) -> Path:
    """Where a rotated refresh token of this credential is kept (one file per credential)."""
    configured = _required(auth.refresh_token, "refresh_token").get_secret_value()
    identity = f"{auth.token_url}\n{auth.client_id}\n{configured}"
    return state_dir / f"refresh-token-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.json"


def build_source(auth: AuthSettings, state_dir: Path | None = None) -> TokenSource | None:
    """The token source for an endpoint's ``auth`` settings (None for kind ``none``).

    ``state_dir`` (the daemon's) keeps rotated refresh tokens across restarts.
    """
    if isinstance(auth, BearerAuth):
        return StaticToken(_required(auth.token, "token"))
    if isinstance(auth, OAuth2ClientCredentialsAuth):
        return ClientCredentials(
            str(auth.token_url),
            auth.client_id,
            _required(auth.client_secret, "client_secret"),
            scope=auth.scope,
            client_auth=auth.client_auth,
            default_lifetime=auth.default_lifetime,
        )
    if isinstance(auth, OAuth2RefreshTokenAuth):
        return RefreshToken(
            str(auth.token_url),
            auth.client_id,
            _required(auth.refresh_token, "refresh_token"),
            auth.client_secret,
            store=None if state_dir is None else refresh_token_store(auth, state_dir),
            default_lifetime=auth.default_lifetime,
        )
    if isinstance(auth, SalesforceJwtAuth):
        return SalesforceJwt(
            str(auth.login_url),
            auth.client_id,
            auth.username,
            _required(auth.private_key, "private_key"),
            token_lifetime=auth.token_lifetime,
            audience=None if auth.audience is None else str(auth.audience),
        )
    return None


def credential_key(auth: BaseModel) -> Hashable:
    """Equal for two auth settings that denote the same credential (secrets compared, not shown).

    An explicit ``name`` is part of the key only through the credential it names: two endpoints
    with identical credentials share one token whatever they call it.
    """
    items = []
    for field in sorted(type(auth).model_fields):
        if field in _PLACEMENT_FIELDS or field.endswith("_file"):
            continue  # *_file was already read into its secret field
        value = getattr(auth, field)
        items.append((field, value if isinstance(value, Hashable) else repr(value)))
    return (type(auth).__name__, tuple(items))


def credential_for(
    registry: CredentialRegistry,
    auth: AuthSettings,
    endpoint_name: str,
    state_dir: Path | None = None,
) -> Credential | None:
    """The shared credential for an endpoint's ``auth`` (None for kind ``none``).

    Its name (the ``credential`` metric label) is ``auth.name`` or the first endpoint using it.
    """
    if isinstance(auth, NoAuth):
        return None
    hooks: AuthHooks = registry.hooks

    def create() -> Credential:
        source = build_source(auth, state_dir)
        assert source is not None  # every kind but "none" has a source
        return Credential(
            auth.name or endpoint_name,
            source,
            refresh_fraction=auth.refresh_fraction,
            min_interval=auth.min_token_interval,
            hooks=hooks,
        )

    return registry.get(credential_key(auth), create)


def extension_for(
    registry: CredentialRegistry,
    auth: AuthSettings,
    endpoint_name: str,
    state_dir: Path | None = None,
) -> TokenAuthExtension | None:
    """The client's auth extension for an endpoint (None for kind ``none``)."""
    credential = credential_for(registry, auth, endpoint_name, state_dir)
    if credential is None:
        return None
    return TokenAuthExtension(credential, auth.placement, auth.ext_path)


async def resolve_endpoint_url(endpoint: Endpoint, extension: TokenAuthExtension | None) -> str:
    """The endpoint's CometD URL. When its auth kind derives it (Salesforce: ``url`` unset),
    a token is fetched first and its ``instance_url`` gives ``<instance_url>/cometd/<api>``."""
    if endpoint.url is not None or extension is None:
        return endpoint.resolve_url()
    token = await extension.credential.get()
    return endpoint.resolve_url(token.instance_url)
