"""Fixtures for the no-loss tests: a CometD server with Salesforce semantics.

``salesforce_server`` runs tests/servers/salesforce_server.js (a real cometd-nodejs-server with
a retention buffer, the replay extension, ``403::Unknown client`` and a short reconnect budget)
through the shared :class:`tests.fixtures.servers.NodeBayeuxServer` machinery, so it has the
same control methods (``publish``, ``drop_sessions``, ``stats``, ``restart``...) plus
:meth:`SalesforceServer.set_retention`. ``salesforce_factory`` starts variants
(``ack=1``, ``replay=0``, other timings). The retention buffer lives in a file under
``tmp_path`` so it survives :meth:`restart`, as Salesforce's event bus outlives a server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import servers as _servers
from tests.fixtures.servers import NodeBayeuxServer


SALESFORCE_DEFAULTS: dict[str, Any] = {
    "timeout": 2000,  # held /meta/connect, ms (Salesforce: 110 s)
    "interval": 0,
    "max_interval": 2000,  # reconnect budget after a response, ms (Salesforce: 40 s)
}


class SalesforceServer(NodeBayeuxServer):
    """A running salesforce_server.js; ``url`` is its ``/cometd`` endpoint."""

    @property
    def name(self) -> str:
        return "salesforce-like cometd-nodejs-server"

    async def set_retention(self, size: int, channel: str | None = None) -> dict[str, Any]:
        """Keep only the newest ``size`` events (of ``channel``, or of every channel and from
        now on). Returns ``{channel: {size, oldest, newest, last_issued}}``."""
        body: dict[str, Any] = {"size": size}
        if channel is not None:
            body["channel"] = channel
        result: dict[str, Any] = await self._control("POST", "retention", body)
        return result


SalesforceFactory = Callable[..., SalesforceServer]


@pytest.fixture
def salesforce_factory(tmp_path: Path) -> Iterator[SalesforceFactory]:
    """Start Salesforce-like servers with options (``ack=1``, ``replay=0``, ``retention=N``,
    ``max_interval=ms``...); all are stopped at teardown."""
    started: list[SalesforceServer] = []

    def factory(**options: Any) -> SalesforceServer:
        _servers.require_node_deps()
        merged = {
            **SALESFORCE_DEFAULTS,
            "buffer_file": str(tmp_path / f"sf-buffer-{len(started)}.json"),
            **options,
        }
        server = SalesforceServer(kind="salesforce", options=merged, connection_type="long-polling")
        started.append(server)
        server.start_sync()
        return server

    try:
        yield factory
    finally:
        for server in started:
            with contextlib.suppress(Exception):
                server.stop_sync()


@pytest.fixture
def salesforce_server(salesforce_factory: SalesforceFactory) -> SalesforceServer:
    """A Salesforce-like server: replay on, no ack, 2 s reconnect budget."""
    return salesforce_factory()
