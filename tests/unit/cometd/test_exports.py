"""The public API: aiocometd's documented names, and every ``__all__`` entry resolves."""

from __future__ import annotations

import importlib

import pytest

import bridge.cometd
from bridge.cometd import exceptions


MODULES = [
    "bridge.cometd",
    "bridge.cometd.client",
    "bridge.cometd.client_core",
    "bridge.cometd.connector",
    "bridge.cometd.buffer",
    "bridge.cometd.wiring",
    "bridge.cometd.losses",
    "bridge.cometd.pending",
    "bridge.cometd.session_state",
    "bridge.cometd.events",
    "bridge.cometd.exceptions",
    "bridge.cometd.extensions",
    "bridge.cometd.protocol",
    "bridge.cometd.transports",
    "bridge.cometd.transports.base",
    "bridge.cometd.transports.registry",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_entries_resolve(name: str) -> None:
    module = importlib.import_module(name)
    for entry in module.__all__:
        assert hasattr(module, entry), f"{name}.{entry}"


def test_documented_aiocometd_names() -> None:
    for name in ("Client", "ConnectionType", "Extension", "AuthExtension"):
        assert name in bridge.cometd.__all__
    assert bridge.cometd.ConnectionType.WEBSOCKET.value == "websocket"
    assert bridge.cometd.ConnectionType.LONG_POLLING.value == "long-polling"
    for name in (
        "AiocometdException",
        "ClientError",
        "ClientInvalidOperation",
        "TransportError",
        "TransportInvalidOperation",
        "TransportTimeoutError",
        "TransportConnectionClosed",
        "ServerError",
    ):
        assert issubclass(getattr(exceptions, name), exceptions.CometdError)


def test_exception_tree() -> None:
    assert exceptions.AiocometdException is exceptions.CometdError
    assert issubclass(exceptions.ClientInvalidOperation, exceptions.ClientError)
    for name in (
        "TransportInvalidOperation",
        "TransportTimeoutError",
        "TransportConnectionClosed",
        "HTTPStatusError",
        "MalformedResponseError",
    ):
        assert issubclass(getattr(exceptions, name), exceptions.TransportError)
    assert issubclass(exceptions.WebSocketUpgradeRefused, exceptions.TransportConnectionClosed)


def test_library_imports_nothing_else_from_bridge() -> None:
    import ast
    from pathlib import Path

    root = Path(bridge.cometd.__file__).parent
    for path in root.rglob("*.py"):
        if "ext" in path.relative_to(root).parts[:-1]:
            continue  # bridge/cometd/ext belongs to another part
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("bridge"), f"{path}: {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("bridge") for a in node.names), path
