"""The daemon's HTTP surface: ``/metrics``, ``/healthz``, ``/readyz``, ``/status`` and the
status page at ``/``.

One aiohttp application in the daemon's own event loop (no extra thread). The supervisor
supplies ``ready()`` and ``status()``; this module knows nothing about endpoints.

With a ``token`` (``BRIDGE_HTTP_TOKEN``), ``/`` and ``/status`` need it: as
``Authorization: Bearer <token>``, or as the cookie the ``/login`` form sets. ``/metrics``,
``/healthz`` and ``/readyz`` stay open for scrapers and probes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import SecretStr

from bridge.logging import redact_data
from bridge.status_page import render_login, render_page


log = structlog.get_logger("bridge.http")


__all__ = ["create_app", "start_http_server", "bound_port", "ReadyCheck", "StatusSource"]

ReadyCheck = Callable[[], "bool | tuple[bool, str]"]
"""Returns True when ready, or (ready, reason) to say why not."""
StatusSource = Callable[[], Mapping[str, Any]]
"""Returns JSON-serialisable status; it is passed through ``redact_data`` before serving."""


def _dumps(value: Any) -> str:
    # default=str: timestamps, paths and enums in a status dict render instead of failing.
    return json.dumps(value, default=str, indent=None, separators=(",", ":"))


SESSION_COOKIE = "bridge_session"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _TokenGate:
    """Checks the HTTP token (header or cookie), always in constant time.

    The cookie holds a keyed digest of the token, not the token itself: a copied cookie
    does not reveal the token, and changing the token signs every browser out."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token.get_secret_value().encode()
        self.cookie_value = hmac.new(self._token, b"status-page", hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def allowed(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(given.strip()):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.cookie_value.encode())

    def guard(self, handler: _Handler, *, page: bool) -> _Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.allowed(request):
                return await handler(request)
            headers = {"WWW-Authenticate": 'Bearer realm="cometd-bridge"'}
            if page:  # a person at a browser: the login form, still with 401
                return web.Response(
                    status=401, text=render_login(), content_type="text/html", headers=headers
                )
            return web.json_response(
                {"error": "unauthorized: send Authorization: Bearer <BRIDGE_HTTP_TOKEN>"},
                status=401,
                headers=headers,
            )

        return guarded

    async def login_form(self, _request: web.Request) -> web.Response:
        return web.Response(text=render_login(), content_type="text/html")

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = form.get("token")
        if not isinstance(given, str) or not self.token_ok(given):
            log.warning("status page sign-in refused", peer=request.remote)
            return web.Response(
                status=401, text=render_login("Wrong token."), content_type="text/html"
            )
        response = web.Response(status=303, headers={"Location": "./"})
        # HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it.
        response.set_cookie(
            SESSION_COOKIE, self.cookie_value, httponly=True, samesite="Strict", path="/"
        )
        return response


def create_app(
    registry: CollectorRegistry,
    ready: ReadyCheck | None = None,
    status: StatusSource | None = None,
    token: SecretStr | None = None,
) -> web.Application:
    """Build the application. Without ``ready`` the process is never ready; without
    ``status``, ``/status`` returns ``{}``; with ``token``, ``/`` and ``/status`` need it."""

    async def healthz(_request: web.Request) -> web.Response:
        # Answering at all proves the event loop is alive; that is what liveness means here.
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        try:
            result = ready() if ready is not None else (False, "starting")
        except Exception as exc:  # a failing check means "not ready", never a 500
            result = (False, f"readiness check failed: {type(exc).__name__}")
        ok, reason = result if isinstance(result, tuple) else (result, "not ready")
        if ok:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    def status_body() -> dict[str, Any]:
        # Redacted again here: a last error message may quote a URL with credentials.
        return redact_data(dict(status())) if status is not None else {}

    async def status_handler(_request: web.Request) -> web.Response:
        return web.json_response(status_body(), dumps=_dumps)

    async def page_handler(_request: web.Request) -> web.Response:
        # Rendered from the very dict /status serves, so the page and the JSON agree.
        return web.Response(
            text=render_page(status_body()),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    page: _Handler = page_handler
    status_route: _Handler = status_handler
    app = web.Application()
    if token is not None:
        gate = _TokenGate(token)
        page = gate.guard(page_handler, page=True)
        status_route = gate.guard(status_handler, page=False)
        app.router.add_get("/login", gate.login_form)
        app.router.add_post("/login", gate.login)
    app.router.add_get("/", page)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status_route)
    return app


async def start_http_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    ready: ReadyCheck | None = None,
    status: StatusSource | None = None,
    token: SecretStr | None = None,
) -> web.AppRunner:
    """Serve the application on ``host:port`` (``port=0``: any free port) without an access log.

    Returns the runner: ``await runner.cleanup()`` stops it; :func:`bound_port` tells the port.
    """
    runner = web.AppRunner(create_app(registry, ready, status, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    # The port actually bound (with port 0, the only way to learn it from outside).
    log.info("http server bound", host=host, port=bound_port(runner))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the runner's first site listens on (useful after ``port=0``)."""
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    raise RuntimeError("the HTTP server is not listening")
