"""The status page at ``/``, its rate ring and the optional HTTP token, against a real aiohttp
server on a free port (the browser test is tests/e2e/test_status_page_browser.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from bridge.http import SESSION_COOKIE, bound_port, start_http_server
from bridge.rate_history import RateHistory
from bridge.settings import load_settings, redacted_dump
from bridge.status_page import fmt, render_page


TOKEN = "s3cret-status-token"

STATUS: dict[str, Any] = {
    "version": "9.9.9",
    "uptime_seconds": 3725.0,
    "ready": True,
    "amqp": {"connected": True, "url": "amqp://guest:***@127.0.0.1:5672/"},
    "credentials": {"sf": {"expires_at": 2e9, "expires_in_seconds": 1800.0}},
    "endpoints": {
        "orders": {
            "state": "streaming",
            "role": "leader",
            "connection_type": "long-polling",
            "client_id_age_seconds": 125.0,
            "received_total": 12345,
            "confirmed_total": 12340,
            "received_per_second": 41.5,
            "published_per_second": 41.0,
            "rate_history": {"received_per_second": [1.0, 5.0, 41.5]},
            "pending": 250,
            "pending_capacity": 1000,
            "inflight": 5,
            "reconnects": 3,
            "reconnects_by_reason": {"network": 2.0, "buffer_full": 1.0},
            "last_message_age_seconds": 0.4,
            "last_error": "<script>alert(1)</script>",
            "gaps": 1,
            "last_gap": {"channel": "/event/A", "from": 5},
            "positions": {"/event/A": {"replay_id": 777, "age_seconds": 65.0}},
        }
    },
}


def visible(html: str) -> str:
    """The page's text as a reader sees it (no CSS, script or tags)."""
    html = re.sub(r"<(style|script)>.*?</\1>", " ", html, flags=re.DOTALL)
    return re.sub(r"<[^>]+>", " ", html)


# --------------------------------------------------------------------------- the ring


def test_rate_history_keeps_one_sample_per_interval_and_a_bounded_window() -> None:
    ring = RateHistory(interval=5.0, window=20.0)
    assert ring.sample("a", 100.0, 0, 0)
    assert not ring.sample("a", 103.0, 999, 999), "sooner than the interval: ignored"
    assert ring.sample("a", 105.0, 50, 25)
    [first] = ring.rates("a")
    assert (first.received_per_second, first.published_per_second) == (10.0, 5.0)
    for i in range(2, 10):
        ring.sample("a", 100.0 + 5 * i, 50 * i, 25 * i)
    assert len(ring.rates("a")) == 4, "window / interval samples at most"
    status = ring.as_status("a")
    assert status["received_per_second"] == 10.0
    assert status["rate_history"] == {
        "interval_seconds": 5.0,
        "received_per_second": [10.0] * 4,
        "published_per_second": [5.0] * 4,
    }


def test_rate_history_never_goes_negative_when_a_total_restarts() -> None:
    ring = RateHistory(interval=1.0, window=10.0)
    ring.sample("a", 0.0, 100, 100)
    ring.sample("a", 1.0, 3, 3)
    assert ring.rates("a")[0].received_per_second == 0.0
    assert ring.as_status("unknown")["received_per_second"] is None


# --------------------------------------------------------------------------- rendering


def test_page_shows_every_field_server_rendered() -> None:
    html = render_page(STATUS)
    text = visible(html)
    for shown in (
        "orders",
        "streaming",
        "leader",
        "long-polling",
        "2m 05s",  # session age
        "12,345",
        "41.5/s",
        "250",
        "1,000",
        "buffer_full 1 · network 2",
        "/event/A",
        "777",
        "1m 05s",  # position age
        "channel=/event/A, from=5",
        "in 30m 00s",  # token expiry
        "1h 02m",  # uptime
    ):
        assert shown in text, f"{shown!r} missing from the page"
    assert 'style="width:25.0%"' in html, "pending against capacity"
    assert "<polyline points=" in html
    assert "120.0,2.0" in html, "the sparkline's last point"


def test_page_shows_the_replica_role_when_status_has_one() -> None:
    assert "role" not in visible(render_page({"endpoints": {}}))
    text = visible(render_page({**STATUS, "role": "standby", "replica": "b-1"}))
    assert "role  standby" in text
    assert "replica  b-1" in text


def test_page_escapes_what_it_shows_and_loads_nothing_from_outside() -> None:
    html = render_page(STATUS)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "an external asset"
    assert re.findall(r"<link[^>]*>", html) == ['<link rel="icon" href="data:,">']


def test_formatters() -> None:
    assert fmt("age", 59.9) == "59s"
    assert fmt("age", 86400 + 7200) == "1d 2h"
    assert fmt("until", -61) == "expired 1m 01s ago"
    assert fmt("int", None) == "\u2013"
    assert fmt("counts", {}) == "none"


# --------------------------------------------------------------------------- HTTP and token


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(token: str | None = None) -> str:
        runner = await start_http_server(
            "127.0.0.1",
            0,
            CollectorRegistry(),
            ready=lambda: True,
            status=lambda: STATUS,
            token=None if token is None else SecretStr(token),
        )
        runners.append(runner)
        return f"http://127.0.0.1:{bound_port(runner)}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: keep cookies for an IP-address host (127.0.0.1), as a browser does.
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=10), cookie_jar=jar
    ) as session:
        yield session


async def test_page_is_served_at_root(
    serve: Callable[..., Any], client: aiohttp.ClientSession
) -> None:
    base = await serve()
    async with client.get(f"{base}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert resp.headers["Cache-Control"] == "no-store"
        assert 'data-endpoint="orders"' in await resp.text()
    async with client.get(f"{base}/status") as resp:
        assert resp.status == 200
    async with client.get(f"{base}/login") as resp:
        assert resp.status == 404, "no login without a token"


async def test_token_required_for_page_and_status(
    serve: Callable[..., Any], client: aiohttp.ClientSession
) -> None:
    base = await serve(TOKEN)
    for path in ("/", "/status"):
        async with client.get(base + path) as resp:
            assert resp.status == 401, path
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "orders" not in await resp.text(), f"{path} leaked status without the token"
        for wrong in ("Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
            async with client.get(base + path, headers={"Authorization": wrong}) as resp:
                assert resp.status == 401, (path, wrong)
        async with client.get(base + path, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200, path
            assert "orders" in await resp.text()


async def test_login_form_sets_a_strict_httponly_cookie(
    serve: Callable[..., Any], client: aiohttp.ClientSession
) -> None:
    base = await serve(TOKEN)
    async with client.get(f"{base}/") as resp:
        assert resp.status == 401
        assert '<form method="post" action="login">' in await resp.text()
    async with client.post(f"{base}/login", data={"token": "wrong-token"}) as resp:
        assert resp.status == 401
        assert "Wrong token." in await resp.text()
        assert SESSION_COOKIE not in resp.cookies
    async with client.post(f"{base}/login", data={"token": TOKEN}, allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "./"
        set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie
    assert "SameSite=Strict" in set_cookie
    assert TOKEN not in set_cookie, "the cookie must not carry the token itself"
    for path in ("/", "/status"):
        async with client.get(base + path) as resp:
            assert resp.status == 200, f"{path} with the login cookie"
    client.cookie_jar.clear()
    client.cookie_jar.update_cookies({SESSION_COOKIE: "forged"})
    async with client.get(f"{base}/status") as resp:
        assert resp.status == 401


async def test_metrics_and_probes_stay_open_with_a_token(
    serve: Callable[..., Any], client: aiohttp.ClientSession
) -> None:
    base = await serve(TOKEN)
    for path in ("/metrics", "/healthz", "/readyz"):
        async with client.get(base + path) as resp:
            assert resp.status == 200, path


def test_http_token_can_come_from_the_secrets_directory(tmp_path: Path) -> None:
    (tmp_path / "bridge_http_token").write_text(TOKEN + "\n")
    env = {"BRIDGE_ENDPOINTS": '{"a": {"url": "http://x/cometd", "channels": ["/a"]}}'}
    settings = load_settings(env, secrets_dir=tmp_path)
    assert settings.http_token is not None
    assert settings.http_token.get_secret_value() == TOKEN


def test_http_token_setting_is_secret_everywhere() -> None:
    env = {"BRIDGE_ENDPOINTS": '{"a": {"url": "http://x/cometd", "channels": ["/a"]}}'}
    assert load_settings(env, secrets_dir=None).http_token is None
    settings = load_settings({**env, "BRIDGE_HTTP_TOKEN": TOKEN}, secrets_dir=None)
    assert isinstance(settings.http_token, SecretStr)
    assert settings.http_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)
    assert redacted_dump(settings)["http_token"] == "***"
    with pytest.raises(Exception, match="BRIDGE_HTTP_TOKEN"):
        load_settings({**env, "BRIDGE_HTTP_TOKEN": "short"}, secrets_dir=None)
