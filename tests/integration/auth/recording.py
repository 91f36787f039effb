"""Recorders for auth hooks and client events; tests await conditions on them (no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bridge.auth import RefreshResult
from bridge.cometd import events


class RecordingHooks:
    def __init__(self) -> None:
        self.refreshes: list[tuple[str, RefreshResult]] = []
        self.expiries: list[tuple[str, float | None]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def count(self, result: RefreshResult) -> int:
        return sum(1 for _, r in self.refreshes if r == result)

    def token_refreshed(self, credential: str, result: RefreshResult) -> None:
        self.refreshes.append((credential, result))
        self._notify()

    def token_expiry(self, credential: str, expires_at: float | None) -> None:
        self.expiries.append((credential, expires_at))
        self._notify()

    def _notify(self) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate():
                future.set_result(None)

    async def wait_for(self, predicate: Callable[[], bool], limit: float = 15.0) -> None:
        """Return once ``predicate()`` holds after some hook call (fail after ``limit`` s)."""
        if predicate():
            return
        waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(limit):
                await waiter[1]
        finally:
            self._waiters.remove(waiter)


class Events:
    """Client listener recording events; tests await conditions on them."""

    def __init__(self) -> None:
        self.seen: list[events.ClientEvent] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def __call__(self, event: events.ClientEvent) -> None:
        self.seen.append(event)
        for predicate, future in self._waiters:
            if not future.done() and predicate():
                future.set_result(None)

    def count(self, kind: type[Any]) -> int:
        return sum(1 for e in self.seen if isinstance(e, kind))

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        if predicate():
            return
        waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(60.0):
                await waiter[1]
        finally:
            self._waiters.remove(waiter)
