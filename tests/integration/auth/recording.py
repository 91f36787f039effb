"""AuthHooks that record every call and let a test await a condition on them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bridge.auth import RefreshResult


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
