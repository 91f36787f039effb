"""The daemon's HTTP surface: ``/metrics``, ``/healthz``, ``/readyz``, ``/status``.

One aiohttp application in the daemon's own event loop (no extra thread). The supervisor
supplies ``ready()`` and ``status()``; this module knows nothing about endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from bridge.logging import redact_data


log = structlog.get_logger("bridge.http")


__all__ = ["create_app", "start_http_server", "bound_port", "ReadyCheck", "StatusSource"]

ReadyCheck = Callable[[], "bool | tuple[bool, str]"]
"""Returns True when ready, or (ready, reason) to say why not."""
StatusSource = Callable[[], Mapping[str, Any]]
"""Returns JSON-serialisable status; it is passed through ``redact_data`` before serving."""


def _dumps(value: Any) -> str:
    # default=str: timestamps, paths and enums in a status dict render instead of failing.
    return json.dumps(value, default=str, indent=None, separators=(",", ":"))


def create_app(
    registry: CollectorRegistry,
    ready: ReadyCheck | None = None,
    status: StatusSource | None = None,
) -> web.Application:
    """Build the application. Without ``ready`` the process is never ready; without
    ``status``, ``/status`` returns ``{}``."""

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

    async def status_handler(_request: web.Request) -> web.Response:
        # Redacted again here: a last error message may quote a URL with credentials.
        body = redact_data(dict(status())) if status is not None else {}
        return web.json_response(body, dumps=_dumps)

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status_handler)
    return app


async def start_http_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    ready: ReadyCheck | None = None,
    status: StatusSource | None = None,
) -> web.AppRunner:
    """Serve the application on ``host:port`` (``port=0``: any free port) without an access log.

    Returns the runner: ``await runner.cleanup()`` stops it; :func:`bound_port` tells the port.
    """
    runner = web.AppRunner(create_app(registry, ready, status), access_log=None)
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
