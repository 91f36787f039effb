"""Credential semantics with a scripted in-memory token source (no sockets)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import SecretStr

from bridge.auth import (
    Credential,
    CredentialClosed,
    PrometheusAuthHooks,
    StaticToken,
    Token,
    TokenAuthExtension,
)


class ScriptedSource:
    """Issues ``tok-<n>`` tokens; ``gate`` (when set) holds each fetch until opened."""

    refreshable = True

    def __init__(self, lifetime: float | None = 60.0) -> None:
        self.lifetime = lifetime
        self.fetches = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def fetch(self, session: aiohttp.ClientSession) -> Token:
        self.fetches += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        now = time.time()
        expires = None if self.lifetime is None else now + self.lifetime
        return Token(SecretStr(f"tok-{self.fetches}"), issued_at=now, expires_at=expires)


@pytest.fixture
async def source() -> ScriptedSource:
    return ScriptedSource()


@pytest.fixture
async def credential(source: ScriptedSource) -> AsyncIterator[Credential]:
    # No minimum interval: these tests are about single-flight and backoff alone.
    credential = Credential("unit", source, backoff_initial=0.1, backoff_max=0.2, min_interval=0.0)
    yield credential
    await credential.aclose()


async def test_header_placement(credential: Credential) -> None:
    extension = TokenAuthExtension(credential)
    headers: dict[str, str] = {"Content-Type": "application/json"}
    payload = [{"channel": "/meta/handshake"}]
    await extension.outgoing(payload, headers)
    assert headers["Authorization"] == "Bearer tok-1"
    assert payload == [{"channel": "/meta/handshake"}]


async def test_ext_placement_on_meta_messages_only(credential: Credential) -> None:
    extension = TokenAuthExtension(credential, placement="ext", ext_path="x.auth.token")
    headers: dict[str, str] = {}
    payload: list[dict[str, Any]] = [
        {"channel": "/meta/connect", "ext": {"ack": 3}},
        {"channel": "/meta/subscribe"},
        {"channel": "/orders", "data": {}},
    ]
    await extension.outgoing(payload, headers)
    assert headers == {}
    assert payload[0]["ext"] == {"ack": 3, "x": {"auth": {"token": "tok-1"}}}
    assert payload[1]["ext"] == {"x": {"auth": {"token": "tok-1"}}}
    assert "ext" not in payload[2]


@pytest.mark.parametrize(("placement", "path"), [("cookie", "a"), ("ext", "a..b"), ("ext", "")])
async def test_bad_placement_is_refused(credential: Credential, placement: str, path: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - either argument may be the bad one
        TokenAuthExtension(credential, placement, path)  # type: ignore[arg-type]


async def test_stale_rejection_does_not_refetch(
    credential: Credential, source: ScriptedSource
) -> None:
    first = await credential.get()
    second = await credential.invalidate(first)
    # Someone else's report about the first token arrives late: the second one is kept.
    assert await credential.invalidate(first) is second
    assert source.fetches == 2


async def test_cancelled_waiter_does_not_cancel_the_shared_request(
    credential: Credential, source: ScriptedSource
) -> None:
    source.gate = asyncio.Event()
    impatient = asyncio.create_task(credential.get())
    patient = asyncio.create_task(credential.get())
    await source.started.wait()
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    source.gate.set()
    token = await patient
    assert token.access_token.get_secret_value() == "tok-1"
    assert source.fetches == 1


async def test_fresh_tokens_rejected_again_and_again_back_off(
    credential: Credential, source: ScriptedSource
) -> None:
    """A server that refuses every token (wrong user, skew) must not cause a token storm."""
    extension = TokenAuthExtension(credential)
    rejections = 0

    async def reject_forever() -> None:
        nonlocal rejections
        while True:
            await extension.outgoing([{"channel": "/meta/handshake"}], {})
            rejections += 1
            await extension.authenticate()

    task = asyncio.create_task(reject_forever())
    await asyncio.sleep(1.0)  # the counting window, not synchronisation
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # Delays of at least 0.05, 0.1, 0.1, ... s: no more than ~11 fetches in a second.
    assert 2 <= source.fetches <= 12
    assert rejections <= source.fetches


async def test_static_token_rejection_is_logged_and_throttled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    credential = Credential(
        "static", StaticToken("s3cret-bearer"), backoff_initial=0.1, backoff_max=0.2
    )
    try:
        extension = TokenAuthExtension(credential)
        await extension.outgoing([], {})
        count = 0

        async def reject_forever() -> None:
            nonlocal count
            while True:
                await extension.outgoing([], {})
                await extension.authenticate()
                count += 1

        task = asyncio.create_task(reject_forever())
        await asyncio.sleep(0.6)  # the counting window
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert 1 <= count <= 12
        assert "cannot be refreshed" in caplog.text
        assert "s3cret-bearer" not in caplog.text
        assert "s3cret-bearer" not in repr(credential)
    finally:
        await credential.aclose()


async def test_closed_credential_refuses(source: ScriptedSource) -> None:
    credential = Credential("unit", source)
    await credential.get()
    await credential.aclose()
    with pytest.raises(CredentialClosed):
        await credential.invalidate(credential.token)


async def test_proactive_refresh_timer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    source = ScriptedSource(lifetime=0.5)
    credential = Credential("timer", source, refresh_fraction=0.5, min_interval=0.0)
    try:
        await credential.get()
        source.started.clear()
        await asyncio.wait_for(source.started.wait(), 5)
        # Refreshed by the timer alone, while the first token was still valid.
        assert source.fetches == 2
    finally:
        await credential.aclose()


def test_prometheus_hooks() -> None:
    registry = CollectorRegistry()
    refreshes = Counter(
        "cometd_bridge_token_refreshes", "", ["credential", "result"], registry=registry
    )
    expiry = Gauge(
        "cometd_bridge_token_expiry_timestamp_seconds", "", ["credential"], registry=registry
    )
    hooks = PrometheusAuthHooks(refreshes, expiry)
    hooks.token_refreshed("sf", "success")
    hooks.token_refreshed("sf", "failure")
    hooks.token_expiry("sf", 1234.5)
    labels = {"credential": "sf", "result": "success"}
    assert registry.get_sample_value("cometd_bridge_token_refreshes_total", labels) == 1
    assert (
        registry.get_sample_value(
            "cometd_bridge_token_expiry_timestamp_seconds", {"credential": "sf"}
        )
        == 1234.5
    )
    hooks.token_expiry("sf", None)
    assert registry.get_sample_value(
        "cometd_bridge_token_expiry_timestamp_seconds", {"credential": "sf"}
    ) == float("inf")
