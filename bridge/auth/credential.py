"""A shared, self-refreshing credential: the one place that decides when to ask for a token.

Every endpoint using the same auth settings holds the same :class:`Credential` (through a
:class:`CredentialRegistry`), so N endpoints mean one token, one proactive refresh timer and, when
the server rejects the token, one token request however many endpoints notice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Hashable

import aiohttp

from bridge.auth.hooks import AuthHooks, NullAuthHooks
from bridge.auth.tokens import Token, TokenError, TokenSource


__all__ = ["Credential", "CredentialRegistry", "CredentialClosed"]

log = logging.getLogger(__name__)


class CredentialClosed(TokenError):
    """The credential was closed (daemon shutting down)."""


class Credential:
    """Caches a token from ``source`` and renews it before it expires.

    - :meth:`get` returns a usable token, fetching one when there is none (or it expired).
    - A background timer refreshes at ``refresh_fraction`` of the lifetime, minus up to
      ``refresh_jitter`` of it, so many bridges started together do not refresh in lockstep.
    - :meth:`invalidate` is for a token the server rejected: it fetches a new one unless another
      caller already did, so concurrent rejections cost one request.
    - All token requests are single-flight, and two requests to a token endpoint are at least
      ``min_interval`` apart (a static token costs no request and is exempt). After a failure (or
      a freshly issued token rejected again) the next request waits a jittered, exponentially
      growing delay starting from that interval, so neither a down token endpoint, nor a server
      that refuses every token, nor one whose tokens expire on arrival can cause a hot loop.
    """

    def __init__(
        self,
        name: str,
        source: TokenSource,
        *,
        refresh_fraction: float = 0.8,
        refresh_jitter: float = 0.1,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        min_interval: float = 30.0,
        hooks: AuthHooks | None = None,
        session: aiohttp.ClientSession | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < refresh_fraction <= 1:
            raise ValueError("refresh_fraction must be in (0, 1]")
        if not 0 <= refresh_jitter < 1:
            raise ValueError("refresh_jitter must be in [0, 1)")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if not 0 <= min_interval < float("inf"):
            raise ValueError("min_interval must be a finite number >= 0")
        self.name = name
        self.source = source
        self.refresh_fraction = refresh_fraction
        self.refresh_jitter = refresh_jitter
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.min_interval = min_interval
        self._hooks: AuthHooks = hooks or NullAuthHooks()
        self._session = session
        self._own_session = session is None
        self._rng = rng
        self._token: Token | None = None
        self._refresh_at: float | None = None  # wall clock, like Token.expires_at
        self._not_before = 0.0  # loop clock: no token request before this
        self._last_request: float | None = None  # loop clock: when the last request started
        self._last_digest: bytes | None = None  # of the last token issued: log only changes
        self._failures = 0  # consecutive failed token requests
        self._rejections = 0  # consecutive rejections of freshly issued tokens
        self._inflight: asyncio.Task[Token] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        #: Token requests made so far (attempts, successful or not).
        self.requests = 0

    def __repr__(self) -> str:
        return f"Credential(name={self.name!r}, source={self.source!r})"

    @property
    def token(self) -> Token | None:
        """The current token, if any (it may be about to expire)."""
        return self._token

    @property
    def instance_url(self) -> str | None:
        """``instance_url`` from the last token reply (Salesforce), else None."""
        return None if self._token is None else self._token.instance_url

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    async def get(self) -> Token:
        """A token that has not expired, fetching one if needed (waits out any backoff)."""
        token = self._token
        if token is not None and self._usable(token):
            return token
        return await self._refresh_shared()

    async def invalidate(self, rejected: Token | None) -> Token:
        """The server rejected ``rejected`` (None: unknown which); return a different token.

        If the current token is already another one (someone refreshed meanwhile), it is
        returned without a request.
        """
        current = self._token
        if (
            current is not None
            and rejected is not None
            and current is not rejected
            and self._usable(current)
        ):
            return current
        if current is not None and (rejected is None or current is rejected):
            self._note_rejection(current)
            self._token = None
        if not self.source.refreshable and current is not None:
            log.warning(
                "credential %s: the server rejected the static bearer token; "
                "it cannot be refreshed, check the configuration",
                self.name,
            )
        return await self._refresh_shared()

    async def aclose(self) -> None:
        """Stop the refresh timer and any request in flight; close the HTTP session we own."""
        self._closed = True
        tasks = [t for t in (self._refresher, self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TokenError):
                await task
        self._refresher = self._inflight = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- internals ---------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _usable(self, token: Token) -> bool:
        if token.expires_at is None:
            return True
        lifetime = token.lifetime or 0.0
        # Stop handing out a token shortly before it expires: a request still has to travel.
        margin = min(30.0, lifetime * (1 - self.refresh_fraction) / 2)
        return time.time() < token.expires_at - margin

    def _backoff(self, attempt: int) -> float:
        """Jittered exponential delay for the ``attempt``-th consecutive failure (1-based).

        It grows from the minimum interval (when that is larger), so bridges that failed
        together spread out instead of retrying in lockstep every ``min_interval``.
        """
        base = max(self.backoff_initial, self._interval())
        ceiling = min(max(self.backoff_max, base), base * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng() * ceiling / 2

    def _interval(self) -> float:
        # The interval protects a token endpoint; a static token is not fetched from anywhere.
        return self.min_interval if self.source.refreshable else 0.0

    def _earliest_request(self) -> float:
        """Loop time before which no token request may start (backoff, minimum interval)."""
        earliest = self._not_before
        if self._last_request is not None:
            earliest = max(earliest, self._last_request + self._interval())
        return earliest

    def _note_rejection(self, token: Token) -> None:
        # A token rejected soon after it was issued says "fetching again will not help soon"
        # (wrong user, clock skew, static token): back off. One that worked for a while and then
        # was rejected (revoked, session timeout) deserves an immediate new one.
        age = time.time() - token.issued_at
        lifetime = token.lifetime
        young = age < (lifetime * self.refresh_fraction if lifetime else self.backoff_max)
        self._rejections = self._rejections + 1 if young else 1
        if self._rejections > 1:
            delay = self._backoff(self._rejections - 1)
            loop_now = asyncio.get_running_loop().time()
            self._not_before = max(self._not_before, loop_now + delay)
            log.warning(
                "credential %s: a freshly issued token was rejected %d times in a row; "
                "next token request in %.1fs",
                self.name,
                self._rejections,
                delay,
            )

    async def _refresh_shared(self) -> Token:
        if self._closed:
            raise CredentialClosed(f"credential {self.name} is closed")
        task = self._inflight
        if task is None:
            task = asyncio.create_task(self._attempt(), name=f"token-request:{self.name}")
            # Retrieve the outcome even if every waiter was cancelled: no "never retrieved".
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight = task
        # shield: one waiter being cancelled must not cancel the request the others share.
        return await asyncio.shield(task)

    async def _attempt(self) -> Token:
        loop = asyncio.get_running_loop()
        try:
            delay = self._earliest_request() - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._last_request = loop.time()
            self.requests += 1
            try:
                token = await self.source.fetch(self._get_session())
            except Exception as exc:
                self._failures += 1
                self._not_before = loop.time() + self._backoff(self._failures)
                self._hooks.token_refreshed(self.name, "failure")
                # str(exc) of our TokenErrors never carries secrets; other errors: type only.
                reason = str(exc) if isinstance(exc, TokenError) else type(exc).__name__
                log.warning(
                    "credential %s: token request failed (%s), attempt %d; next in %.1fs",
                    self.name,
                    reason,
                    self._failures,
                    self._earliest_request() - loop.time(),  # the backoff or the interval
                )
                if isinstance(exc, TokenError):
                    raise
                raise TokenError(f"token request failed: {reason}") from exc
            self._failures = 0
            self._not_before = 0.0
            self._token = token
            self._refresh_at = self._schedule(token)
            self._hooks.token_refreshed(self.name, "success")
            self._hooks.token_expiry(self.name, token.expires_at)
            self._log_token(token)
            self._ensure_refresher()
            return token
        finally:
            self._inflight = None

    def _log_token(self, token: Token) -> None:
        lifetime = "no expiry" if token.lifetime is None else f"expires in {token.lifetime:.0f}s"
        digest = hashlib.sha256(token.access_token.get_secret_value().encode()).digest()
        if digest == self._last_digest:
            # Endpoints that cache tokens answer with the same one: not news for the INFO log.
            log.debug(
                "credential %s: token endpoint returned the same token (%s)", self.name, lifetime
            )
        else:
            self._last_digest = digest
            log.info("credential %s: new token (%s)", self.name, lifetime)
        interval = self._interval()
        if token.lifetime is not None and token.lifetime < interval:
            log.warning(
                "credential %s: tokens live %.1fs, less than the %.0fs minimum between token "
                "requests; the endpoint will be down part of the time",
                self.name,
                token.lifetime,
                interval,
            )

    def _schedule(self, token: Token) -> float | None:
        lifetime = token.lifetime
        if lifetime is None or not self.source.refreshable:
            return None
        fraction = self.refresh_fraction * (1 - self.refresh_jitter * self._rng())
        return token.issued_at + lifetime * fraction

    def _ensure_refresher(self) -> None:
        self._wake.set()  # the schedule changed: the timer re-reads it
        if self._refresher is None and not self._closed:
            self._refresher = asyncio.create_task(
                self._refresh_loop(), name=f"token-refresher:{self.name}"
            )

    async def _refresh_loop(self) -> None:
        while True:
            self._wake.clear()
            refresh_at = self._refresh_at
            if refresh_at is None:
                await self._wake.wait()
                continue
            delay = refresh_at - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            try:
                await self._refresh_shared()
            except CredentialClosed:
                return
            except TokenError:
                # Logged and counted in _attempt; the next try waits out the backoff there.
                continue


class CredentialRegistry:
    """Hands out one :class:`Credential` per distinct auth configuration (the key)."""

    def __init__(
        self,
        hooks: AuthHooks | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.hooks: AuthHooks = hooks or NullAuthHooks()
        self._session = session
        self._credentials: dict[Hashable, Credential] = {}

    def __len__(self) -> int:
        return len(self._credentials)

    def get(self, key: Hashable, factory: Callable[[], Credential]) -> Credential:
        """The credential for ``key``, created by ``factory`` on first use."""
        credential = self._credentials.get(key)
        if credential is None:
            credential = self._credentials[key] = factory()
        return credential

    async def aclose(self) -> None:
        credentials = list(self._credentials.values())
        self._credentials.clear()
        for credential in credentials:
            await credential.aclose()
