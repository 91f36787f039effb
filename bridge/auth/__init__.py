"""OAuth token sources as CometD auth extensions.

- :mod:`~bridge.auth.tokens`: one class per grant (static bearer, client credentials, refresh
  token, Salesforce JWT bearer), each only talking to the token endpoint;
- :mod:`~bridge.auth.credential`: caching, proactive refresh, single-flight, backoff, shared
  per credential through :class:`CredentialRegistry`;
- :mod:`~bridge.auth.extension`: :class:`TokenAuthExtension`, the client-facing part;
- :mod:`~bridge.auth.errors`: failure replies classified (auth, unknown session, quota);
- :mod:`~bridge.auth.factory`: settings → credential and extension.
"""

from __future__ import annotations

from bridge.auth.credential import Credential, CredentialClosed, CredentialRegistry
from bridge.auth.errors import LIMIT_LABELS, Failure, FailureKind, classify_failure, limit_label
from bridge.auth.extension import Placement, TokenAuthExtension, TokenUnavailable
from bridge.auth.factory import (
    build_source,
    credential_for,
    credential_key,
    extension_for,
    resolve_endpoint_url,
)
from bridge.auth.hooks import AuthHooks, NullAuthHooks, PrometheusAuthHooks, RefreshResult
from bridge.auth.tokens import (
    ClientCredentials,
    RefreshToken,
    SalesforceJwt,
    StaticToken,
    Token,
    TokenEndpointUnavailable,
    TokenError,
    TokenRejected,
    TokenSource,
)


__all__ = [
    "Credential",
    "CredentialRegistry",
    "TokenAuthExtension",
    "Placement",
    "TokenUnavailable",
    "credential_for",
    "extension_for",
    "resolve_endpoint_url",
    "build_source",
    "credential_key",
    "Token",
    "TokenSource",
    "StaticToken",
    "ClientCredentials",
    "RefreshToken",
    "SalesforceJwt",
    "TokenError",
    "TokenEndpointUnavailable",
    "TokenRejected",
    "CredentialClosed",
    "AuthHooks",
    "NullAuthHooks",
    "PrometheusAuthHooks",
    "RefreshResult",
    "Failure",
    "FailureKind",
    "classify_failure",
    "limit_label",
    "LIMIT_LABELS",
]
