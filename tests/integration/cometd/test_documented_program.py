"""The documented program streams from every real server and transport, survives a session
drop and a server restart, and stops with TransportTimeoutError when the server is gone."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.servers import NodeBayeuxServer

from . import documented_program
from .conftest import WAIT


pytestmark = pytest.mark.integration

CHANNEL = "/documented/stream"


def test_program_imports_only_the_documented_modules() -> None:
    tree = ast.parse(Path(documented_program.__file__).read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules == {
        "__future__",
        "collections.abc",
        "typing",
        "bridge.cometd",
        "bridge.cometd.exceptions",
    }


class Inbox:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self._grew = asyncio.Event()

    def __call__(self, message: dict[str, Any]) -> None:
        self.seqs.append(message["data"]["seq"])
        self._grew.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.seqs) < count:
                self._grew.clear()
                await self._grew.wait()


async def wait_subscribed(server: NodeBayeuxServer) -> None:
    # The server is another process without push notifications: poll its stats, bounded.
    async with asyncio.timeout(WAIT):
        while (await server.stats())["subscriptions"].get(CHANNEL, 0) < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_documented_program(bayeux_server: NodeBayeuxServer) -> None:
    assert bayeux_server.connection_type is not None
    inbox = Inbox()
    program = asyncio.create_task(
        documented_program.main(
            bayeux_server.url, bayeux_server.connection_type, CHANNEL, inbox, connection_timeout=2
        )
    )
    try:
        expected: list[int] = []
        for disruption in (None, "drop_sessions", "restart"):
            if disruption == "drop_sessions":
                await bayeux_server.drop_sessions()
            elif disruption == "restart":
                await bayeux_server.restart()
            await wait_subscribed(bayeux_server)
            published = await bayeux_server.publish(CHANNEL, 1000)
            expected += range(published["first_seq"], published["last_seq"] + 1)
            await inbox.wait_for(len(expected))
            assert inbox.seqs == expected
        await bayeux_server.stop()
        async with asyncio.timeout(WAIT):
            result = await program
        assert result == "pending=0"
    finally:
        program.cancel()
