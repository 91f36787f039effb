"""The bench consumers' one bounded wait: until a condition on what arrived holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(
    holds: Callable[[], bool],
    changed: asyncio.Event,
    within: float,
    check: Callable[[], None] = lambda: None,
) -> bool:
    """Wait until ``holds()``, woken by ``changed`` (set by the consumer on every delivery);
    False at the bound. ``check()`` raises when the consumer itself failed."""
    deadline = time.monotonic() + within
    while not holds():
        check()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        changed.clear()
        try:
            async with asyncio.timeout(remaining):
                await changed.wait()
        except TimeoutError:
            return holds()
    return True
