"""Helpers for the client interop tests: an awaitable event recorder and a fake-server fixture.

The real servers come from tests/fixtures/servers.py (``bayeux_server``, ``cometd_server``,
``faye_server``, ``node_server_factory``). The fake is tests/fakes/fake_bayeux.py, started here
on a free port (``fake_bayeux``) because no shared fixture for it exists yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bridge.cometd import events
from tests.fakes.fake_bayeux import FakeBayeux


WAIT = 30.0  # upper bound of any wait in these tests (a busy 2-core machine); never a sleep


class Recorder:
    """A ``listener=`` that records events and lets a test await a condition on them."""

    def __init__(self) -> None:
        self.events: list[events.ClientEvent] = []
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()  # strong refs until each has run

    def __call__(self, event: events.ClientEvent) -> None:
        # The listener is synchronous; notifying waiters needs the condition's lock.
        self.events.append(event)
        task = asyncio.get_running_loop().create_task(self._notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def count(self, kind: type[Any]) -> int:
        return len(self.of(kind))

    async def wait(self, predicate: Callable[[], bool], limit: float = WAIT) -> None:
        async with asyncio.timeout(limit), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_count(self, kind: type[Any], count: int, limit: float = WAIT) -> None:
        await self.wait(lambda: self.count(kind) >= count, limit)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def fake_bayeux() -> AsyncIterator[FakeBayeux]:
    """A scriptable fake Bayeux server (long-polling and WebSocket) with short timeouts."""
    server = FakeBayeux(timeout_ms=1000, max_interval_ms=2000, browser_cookie=True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
