"""A real OAuth 2.0 token endpoint for the auth tests (aiohttp on 127.0.0.1, port 0).

It serves every grant the bridge supports: client credentials (client auth in the body or HTTP
Basic), refresh token (optionally rotating the refresh token on each use) and the Salesforce JWT
bearer grant at ``/services/oauth2/token`` (the RS256 signature and the claims are verified with
the public key; the reply has ``instance_url`` and no ``expires_in``, like Salesforce's).

Access tokens are self-describing, ``<n>.<expires_ms>.<hmac>``, signed with ``hmac_key``, so a
CometD server can check them without asking us (tests/servers/auth_ttl.js). Faults are scripted:
``fail_with`` makes the next requests fail (503, ``invalid_client``, ...); ``hold`` keeps requests
waiting until released, to line up concurrent callers deterministically. Misbehaviour of the reply
itself: ``expires_in`` (what the reply claims, whatever the token's real lifetime), ``same_token``
(the last token again, as caching endpoints do) and ``padding`` (an oversized reply, optionally
``chunked`` so no Content-Length announces it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class Issued:
    token: str
    grant: str
    issued_at: float
    expires_at: float | None


@dataclass
class TokenServer:
    lifetime: float = 3.0
    client_id: str = "bridge-client"
    client_secret: str = "s3cr3t-client-Secret"
    refresh_token: str = "r3fresh-token-0"
    rotate_refresh_tokens: bool = False
    jwt_public_key: rsa.RSAPublicKey | None = None
    jwt_username: str = "integration@example.com"
    #: The ``aud`` a JWT assertion must carry, exactly (None: the server's own URL, as a
    #: login endpoint that is its own audience).
    jwt_audience: str | None = None
    instance_url: str = "https://example.my.salesforce.test"
    hmac_key: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    #: When set, the reply's ``expires_in`` (any JSON value: 0, -5, "soon", NaN...), while the
    #: token itself lives ``lifetime`` seconds.
    expires_in: Any = None
    same_token: bool = False
    padding: int = 0
    chunked: bool = False

    url: str = ""
    requests: int = 0
    by_grant: dict[str, int] = field(default_factory=dict)
    issued: list[Issued] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    last_headers: dict[str, str] = field(default_factory=dict)
    last_form: dict[str, str] = field(default_factory=dict)
    last_assertion: dict[str, Any] = field(default_factory=dict)
    _fail: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    _fail_always: tuple[int, dict[str, Any]] | None = None
    _hold: asyncio.Event | None = None
    _held: int = 0
    _held_changed: asyncio.Condition | None = None
    _valid_refresh: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None

    # -- scripting ----------------------------------------------------------------------------

    def fail_with(self, status: int, error: str | None = None, times: int | None = 1) -> None:
        """The next ``times`` requests (None: all, until :meth:`recover`) fail like this."""
        body = {"error": error, "error_description": "scripted failure"} if error else {}
        if times is None:
            self._fail_always = (status, body)
        else:
            self._fail.extend([(status, body)] * times)

    def recover(self) -> None:
        self._fail.clear()
        self._fail_always = None

    def hold(self) -> None:
        """Requests wait (after being counted) until :meth:`release`."""
        self._hold = asyncio.Event()

    def release(self) -> None:
        if self._hold is not None:
            self._hold.set()
            self._hold = None

    async def wait_held(self, count: int, limit: float = 10.0) -> None:
        assert self._held_changed is not None
        async with asyncio.timeout(limit), self._held_changed:
            await self._held_changed.wait_for(lambda: self._held >= count)

    def refresh_token_valid(self, refresh_token: str) -> bool:
        return refresh_token in self._valid_refresh

    def token_valid(self, token: str, now: float | None = None) -> bool:
        """What a resource server would decide: our signature and not expired."""
        try:
            n, expires_ms, signature = token.split(".")
        except ValueError:
            return False
        expected = hmac.new(self.hmac_key, f"{n}.{expires_ms}".encode(), "sha256").hexdigest()
        if not hmac.compare_digest(signature, expected):
            return False
        now = time.time() if now is None else now
        return expires_ms == "0" or now * 1000 < int(expires_ms)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._valid_refresh = {self.refresh_token}
        self._held_changed = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/oauth2/token", self._token)
        app.router.add_post("/services/oauth2/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth2/token"

    # -- the endpoint -------------------------------------------------------------------------

    def _issue(self, grant: str, lifetime: float | None) -> Issued:
        if self.same_token and self.issued:
            return self.issued[-1]
        n = len(self.issued) + 1
        now = time.time()
        expires_at = None if lifetime is None else now + lifetime
        expires_ms = "0" if expires_at is None else str(int(expires_at * 1000))
        signature = hmac.new(self.hmac_key, f"{n}.{expires_ms}".encode(), "sha256").hexdigest()
        issued = Issued(f"{n}.{expires_ms}.{signature}", grant, now, expires_at)
        self.issued.append(issued)
        return issued

    @staticmethod
    def _error(status: int, error: str, description: str = "") -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=status)

    def _client_ok(self, form: dict[str, str], headers: dict[str, str]) -> bool:
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                raw = base64.b64decode(auth[6:], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            client_id, _, secret = raw.partition(":")
            client_id, secret = unquote_plus(client_id), unquote_plus(secret)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == self.client_id and secret == self.client_secret

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.last_form = form
        self.last_headers = dict(request.headers)
        grant = form.get("grant_type", "")
        self.by_grant[grant] = self.by_grant.get(grant, 0) + 1
        if self._hold is not None:
            hold = self._hold
            assert self._held_changed is not None
            async with self._held_changed:
                self._held += 1
                self._held_changed.notify_all()
            await hold.wait()
        failure = self._fail.pop(0) if self._fail else self._fail_always
        if failure is not None:
            status, body = failure
            if body:
                return web.json_response(body, status=status)
            return web.Response(status=status, text="scripted outage")
        if grant == "client_credentials":
            if not self._client_ok(form, self.last_headers):
                return self._error(401, "invalid_client", "bad client credentials")
            issued = self._issue(grant, self.lifetime)
            return await self._reply(request, issued, scope=form.get("scope"))
        if grant == "refresh_token":
            if form.get("client_id") != self.client_id:
                return self._error(401, "invalid_client")
            if form.get("refresh_token") not in self._valid_refresh:
                return self._error(400, "invalid_grant", "refresh token revoked or unknown")
            issued = self._issue(grant, self.lifetime)
            extra: dict[str, Any] = {}
            if self.rotate_refresh_tokens:
                # Rotation: the used refresh token dies, the reply carries its successor.
                self._valid_refresh.discard(form["refresh_token"])
                rotated = f"r3fresh-token-{len(self.issued)}"
                self._valid_refresh.add(rotated)
                extra["refresh_token"] = rotated
            return await self._reply(request, issued, **extra)
        if grant == JWT_BEARER_GRANT:
            problem = self._check_assertion(form.get("assertion", ""))
            if problem:
                self.errors.append(problem)
                return self._error(400, "invalid_grant", problem)
            issued = self._issue(grant, self.lifetime)
            # Salesforce: no expires_in; instance_url names the org's own host.
            body = {
                "access_token": issued.token,
                "instance_url": self.instance_url,
                "id": f"{self.url}/id/00D/005",
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
            }
            return web.json_response(body)
        return self._error(400, "unsupported_grant_type")

    async def _reply(
        self, request: web.Request, issued: Issued, **extra: Any
    ) -> web.StreamResponse:
        body: dict[str, Any] = {"access_token": issued.token, "token_type": "Bearer", **extra}
        if issued.expires_at is not None:
            body["expires_in"] = self.lifetime
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        if self.padding:
            body["padding"] = "x" * self.padding
        text = json.dumps({k: v for k, v in body.items() if v is not None})  # NaN allowed
        if not self.chunked:
            return web.Response(text=text, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        data = text.encode()
        for start in range(0, len(data), 64 * 1024):
            await response.write(data[start : start + 64 * 1024])
        await response.write_eof()
        return response

    def _check_assertion(self, assertion: str) -> str | None:
        """Verify an RS256 JWT bearer assertion; return what is wrong with it, or None."""
        if self.jwt_public_key is None:
            return "no public key configured"
        parts = assertion.split(".")
        if len(parts) != 3:
            return "not a compact JWS"
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except (ValueError, binascii.Error):
            return "undecodable assertion"
        if header.get("alg") != "RS256":
            return f"alg {header.get('alg')!r}"
        try:
            self.jwt_public_key.verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return "bad signature"
        self.last_assertion = claims
        now = time.time()
        if claims.get("iss") != self.client_id:
            return "iss is not the client id"
        if claims.get("sub") != self.jwt_username:
            return "sub is not the user"
        if claims.get("aud") != (self.jwt_audience or self.url):
            return "aud is not the expected audience"
        exp = claims.get("exp")
        if not isinstance(exp, int) or not now < exp <= now + 300:
            return "exp missing, past, or too far ahead"
        return None
