"""Token sources: one OAuth grant each, turning credentials into a short-lived access token.

A source only talks to the token endpoint; caching, refresh timing, single-flight and backoff
live in :mod:`bridge.auth.credential`, so every grant gets them the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote_plus

import aiohttp
from pydantic import SecretStr


__all__ = [
    "Token",
    "TokenError",
    "TokenEndpointUnavailable",
    "TokenRejected",
    "TokenSource",
    "StaticToken",
    "ClientCredentials",
    "RefreshToken",
    "SalesforceJwt",
    "DEFAULT_TIMEOUT",
    "MAX_RESPONSE_SIZE",
    "MAX_LIFETIME",
]

log = logging.getLogger(__name__)

#: Bounds every token request: a hanging token endpoint must not stall a re-handshake forever.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: A token reply is a few hundred bytes (a few KB for a large JWT access token); anything past
#: this is not a token reply, and reading it whole would let the endpoint exhaust our memory.
MAX_RESPONSE_SIZE = 256 * 1024
#: An ``expires_in`` above this (a year) is not a lifetime a token endpoint means: the default
#: lifetime applies instead, so the token is still refreshed on a sane schedule.
MAX_LIFETIME = 365 * 24 * 3600.0


@dataclass(frozen=True, repr=False)
class Token:
    """An access token and when it stops working (``expires_at`` is None: never)."""

    access_token: SecretStr
    issued_at: float
    expires_at: float | None
    instance_url: str | None = None
    token_type: str = "Bearer"

    @property
    def lifetime(self) -> float | None:
        return None if self.expires_at is None else self.expires_at - self.issued_at

    def __repr__(self) -> str:
        # Never the token itself: reprs end up in logs and tracebacks.
        return (
            f"Token(access_token=**********, issued_at={self.issued_at:.3f}, "
            f"expires_at={self.expires_at!r}, instance_url={self.instance_url!r})"
        )


class TokenError(Exception):
    """A token could not be obtained. Messages never contain secrets."""


class TokenEndpointUnavailable(TokenError):
    """Network error, timeout, 5xx or an unreadable reply: worth retrying soon."""


class TokenRejected(TokenError):
    """The endpoint refused the grant (``invalid_client``, ``invalid_grant``, ...)."""

    def __init__(self, error: str, status: int, description: str = "") -> None:
        self.error = error
        self.status = status
        self.description = description
        detail = f": {description}" if description else ""
        super().__init__(f"token endpoint refused the grant: {error} (HTTP {status}){detail}")


class TokenSource(Protocol):
    """One grant. ``fetch`` asks the endpoint for a fresh token each time it is called."""

    @property
    def refreshable(self) -> bool:
        """False when fetching again cannot yield a different token (a static bearer)."""
        ...

    async def fetch(self, session: aiohttp.ClientSession) -> Token: ...


def _secret(value: str | SecretStr) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


class StaticToken:
    """A bearer token given in the configuration; it is used as is and never refreshed."""

    def __init__(self, token: str | SecretStr) -> None:
        self.token = _secret(token)

    def __repr__(self) -> str:
        return "StaticToken(**********)"

    @property
    def refreshable(self) -> bool:
        return False

    async def fetch(self, session: aiohttp.ClientSession) -> Token:
        return Token(self.token, issued_at=time.time(), expires_at=None)


async def _read_capped(response: aiohttp.ClientResponse, url: str, limit: int) -> bytes:
    """The whole body, or TokenEndpointUnavailable as soon as it is known to exceed ``limit``."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise TokenEndpointUnavailable(
            f"token endpoint {url} reply of {declared} bytes exceeds the {limit}-byte limit"
        )
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise TokenEndpointUnavailable(
                f"token endpoint {url} reply exceeds the {limit}-byte limit"
            )
    return bytes(body)


async def _post_token_request(
    session: aiohttp.ClientSession,
    url: str,
    form: dict[str, str],
    headers: dict[str, str] | None,
    client_timeout: aiohttp.ClientTimeout,
    max_size: int = MAX_RESPONSE_SIZE,
) -> dict[str, Any]:
    """POST a form to a token endpoint; return the JSON reply or raise a TokenError."""
    try:
        async with session.post(
            url, data=form, headers=headers, timeout=client_timeout, allow_redirects=False
        ) as response:
            status = response.status
            raw = await _read_capped(response, url, max_size)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TokenEndpointUnavailable(
            f"token endpoint {url} unreachable: {type(exc).__name__}"
        ) from None
    try:
        body: Any = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        body = None
    if status >= 500 or (status != 200 and not isinstance(body, dict)):
        raise TokenEndpointUnavailable(f"token endpoint {url} answered HTTP {status}")
    if not isinstance(body, dict):
        raise TokenEndpointUnavailable(f"token endpoint {url} answered HTTP 200 without JSON")
    if status != 200 or "error" in body:
        # RFC 6749 §5.2 error reply; the description is the server's text, not ours.
        raise TokenRejected(
            str(body.get("error", "unknown_error"))[:64],
            status,
            str(body.get("error_description", ""))[:200],
        )
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise TokenEndpointUnavailable(f"token endpoint {url} replied without access_token")
    return body


def _lifetime(expires_in: Any, default: float | None, url: str) -> float | None:
    """``expires_in`` as seconds if it is a finite, positive, plausible number, else ``default``.

    A lifetime of 0, negative, NaN or infinite would make every token expire on arrival (a
    token request per use) or never; the default keeps the refresh schedule sane.
    """
    if expires_in is None:
        return default
    lifetime: float | None = None
    if not isinstance(expires_in, bool):  # JSON true is not a number of seconds
        try:
            lifetime = float(expires_in)  # some endpoints send "3599" as a string
        except (TypeError, ValueError, OverflowError):
            lifetime = None
    if lifetime is not None and math.isfinite(lifetime) and 0 < lifetime <= MAX_LIFETIME:
        return lifetime
    shown = repr(expires_in)[:40]  # a number or a short word, never the token
    log.warning(
        "token endpoint %s answered expires_in=%s, not a finite positive lifetime of at most "
        "%.0fs; using the default lifetime (%s)",
        url,
        shown,
        MAX_LIFETIME,
        "until rejected" if default is None else f"{default:.0f}s",
    )
    return default


def _token_from_reply(body: dict[str, Any], default_lifetime: float | None, url: str) -> Token:
    now = time.time()
    lifetime = _lifetime(body.get("expires_in"), default_lifetime, url)
    instance_url = body.get("instance_url")
    return Token(
        SecretStr(body["access_token"]),
        issued_at=now,
        expires_at=None if lifetime is None else now + lifetime,
        instance_url=instance_url if isinstance(instance_url, str) else None,
        token_type=str(body.get("token_type") or "Bearer"),
    )


def _basic_auth(client_id: str, client_secret: SecretStr) -> str:
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64, unlike plain HTTP Basic.
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret.get_secret_value())}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


class ClientCredentials:
    """OAuth 2.0 client credentials grant (RFC 6749 §4.4), client auth in the body or Basic."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | SecretStr,
        scope: str | None = None,
        client_auth: str = "body",
        *,
        default_lifetime: float | None = 3600.0,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    ) -> None:
        if client_auth not in ("body", "basic"):
            raise ValueError(f"client_auth must be 'body' or 'basic', not {client_auth!r}")
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = _secret(client_secret)
        self.scope = scope
        self.client_auth = client_auth
        #: Applies when the reply has no ``expires_in``; None means "until rejected".
        self.default_lifetime = default_lifetime
        self.timeout = timeout

    @property
    def refreshable(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    async def fetch(self, session: aiohttp.ClientSession) -> Token:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers: dict[str, str] = {}
        if self.client_auth == "basic":
            headers["Authorization"] = _basic_auth(self.client_id, self.client_secret)
        else:
            form["client_id"] = self.client_id
            form["client_secret"] = self.client_secret.get_secret_value()
        body = await _post_token_request(session, self.token_url, form, headers, self.timeout)
        return _token_from_reply(body, self.default_lifetime, self.token_url)


class RefreshToken:
    """OAuth 2.0 refresh token grant (RFC 6749 §6), following refresh token rotation.

    When the reply carries a new ``refresh_token`` the old one may already be revoked, so the
    new one replaces it for every later request. With ``store`` (a file path) the rotated token
    also survives a restart: it is written there (mode 0600) and preferred over the configured
    one at start, as long as the configured one has not been changed since.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        refresh_token: str | SecretStr,
        client_secret: str | SecretStr | None = None,
        *,
        store: Path | None = None,
        default_lifetime: float | None = 3600.0,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = None if client_secret is None else _secret(client_secret)
        configured = _secret(refresh_token)
        # Identifies the configured token without keeping a second copy of it on disk.
        self._configured_digest = hashlib.sha256(configured.get_secret_value().encode()).hexdigest()
        self.store = store
        self._refresh_token = self._load_stored() or configured
        self.default_lifetime = default_lifetime
        self.timeout = timeout
        self.rotations = 0

    def _load_stored(self) -> SecretStr | None:
        if self.store is None:
            return None
        try:
            saved = json.loads(self.store.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("configured") != self._configured_digest:
            return None  # the operator configured a new refresh token since: it wins
        value = saved.get("refresh_token")
        return SecretStr(value) if isinstance(value, str) and value else None

    def _save(self, refresh_token: str) -> None:
        assert self.store is not None
        directory = self.store.parent
        directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"configured": self._configured_digest, "refresh_token": refresh_token})
        # A fresh name per write (O_EXCL, mode 0600): two writers never share a half-written
        # file, and a planted ".tmp" (a symlink) cannot redirect the secret elsewhere.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.store.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.store)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @property
    def refreshable(self) -> bool:
        return True

    @property
    def refresh_token(self) -> SecretStr:
        return self._refresh_token

    def __repr__(self) -> str:
        return f"RefreshToken(token_url={self.token_url!r}, client_id={self.client_id!r})"

    async def fetch(self, session: aiohttp.ClientSession) -> Token:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token.get_secret_value(),
            "client_id": self.client_id,
        }
        if self.client_secret is not None:
            form["client_secret"] = self.client_secret.get_secret_value()
        body = await _post_token_request(session, self.token_url, form, None, self.timeout)
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != form["refresh_token"]:
            self._refresh_token = SecretStr(rotated)
            self.rotations += 1
            if self.store is not None:
                try:
                    await asyncio.to_thread(self._save, rotated)
                except OSError as exc:
                    # The token itself is fine; only a restart would fall back to the old one.
                    log.warning(
                        "could not store the rotated refresh token in %s: %s",
                        self.store,
                        exc.strerror or type(exc).__name__,
                    )
        return _token_from_reply(body, self.default_lifetime, self.token_url)


class SalesforceJwt:
    """Salesforce OAuth 2.0 JWT bearer flow: an RS256-signed assertion, no client secret.

    Salesforce's reply has no ``expires_in`` (the session lasts as long as the org's session
    timeout), so ``token_lifetime`` applies; its ``instance_url`` gives the CometD URL.
    """

    #: Salesforce accepts an assertion whose ``exp`` is at most three minutes ahead.
    ASSERTION_LIFETIME = 180

    def __init__(
        self,
        login_url: str,
        client_id: str,
        username: str,
        private_key_pem: str | bytes | SecretStr,
        *,
        token_lifetime: float = 7200.0,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        audience: str | None = None,
    ) -> None:
        self.login_url = login_url.rstrip("/")
        self.audience = (audience or login_url).rstrip("/")
        self.client_id = client_id
        self.username = username
        pem = (
            private_key_pem.get_secret_value()
            if isinstance(private_key_pem, SecretStr)
            else private_key_pem
        )
        # Parsed once at start so a bad key is a configuration error, not a runtime one.
        # Imported here: cryptography costs ~7 MB of RSS, and only this grant needs it.
        from bridge.auth.jwt import load_private_key

        self._key = load_private_key(pem)
        self.token_lifetime = token_lifetime
        self.timeout = timeout

    @property
    def refreshable(self) -> bool:
        return True

    @property
    def token_url(self) -> str:
        return f"{self.login_url}/services/oauth2/token"

    def __repr__(self) -> str:
        return (
            f"SalesforceJwt(login_url={self.login_url!r}, audience={self.audience!r}, "
            f"client_id={self.client_id!r}, "
            f"username={self.username!r})"
        )

    def assertion(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims = {
            "iss": self.client_id,
            "sub": self.username,
            "aud": self.audience,
            "exp": int(now) + self.ASSERTION_LIFETIME,
        }
        from bridge.auth.jwt import build_assertion

        return build_assertion(claims, self._key)

    async def fetch(self, session: aiohttp.ClientSession) -> Token:
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion()}
        body = await _post_token_request(session, self.token_url, form, None, self.timeout)
        return _token_from_reply(body, self.token_lifetime, self.token_url)
