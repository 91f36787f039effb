"""Finding the usable underlay of a sink's robust channel after a loss (both sinks share it).

aio-pika reopens a robust channel by itself: at once when only the channel was closed, or as
part of the connection's reconnect. It then runs the channel's ``reopen_callbacks``, the one
event for "a new underlay exists". Between the close and that event, ``RobustChannel.ready()``
may still return and ``get_underlay_channel()`` still hand out the closed underlay (aio-pika
handles the close in a task of its own), so a sink waits for the event instead of polling.
The wait is bounded and backs off: a reopen that never comes (aio-pika gave up restoring a
channel that closed while it was being restored) is logged and looked at again, never waited
for silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import aio_pika.abc
import aiormq.abc
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError


__all__ = ["ChannelAttacher", "Underlay"]

log = logging.getLogger(__name__)

Underlay = aiormq.abc.AbstractChannel

# Longest wait for the reopen event before looking at the channel again, doubling from FIRST.
_REOPEN_WAIT_FIRST: Final = 0.1
_REOPEN_WAIT_MAX: Final = 5.0


class ChannelAttacher:
    """Watches one robust channel's reopening and hands out its usable underlay.

    ``on_reopen`` runs (from the event loop) each time aio-pika reopened the channel: the sink
    wakes its writer there, so it re-attaches even with nothing to publish and ``ready`` turns
    true again on an idle endpoint.
    """

    def __init__(
        self,
        channel: aio_pika.abc.AbstractRobustChannel,
        endpoint: str,
        on_reopen: Callable[[], None],
    ) -> None:
        self._channel = channel
        self._endpoint = endpoint
        self._on_reopen = on_reopen
        self._reopened = asyncio.Event()
        channel.reopen_callbacks.add(self._reopen)

    def _reopen(self, _sender: Any) -> None:
        self._reopened.set()
        self._on_reopen()

    async def usable(self, avoid: Underlay | None) -> Underlay:
        """Wait until the channel has an open underlay other than ``avoid`` (the one just lost
        or given up on, which aio-pika may still report open for a while)."""
        channel = self._channel
        wait = _REOPEN_WAIT_FIRST
        while True:
            # Cleared before looking: a reopen from here on wakes the wait below.
            self._reopened.clear()
            await channel.ready()
            with contextlib.suppress(AMQPError, ChannelInvalidStateError):
                underlay = await channel.get_underlay_channel()
                if not channel.is_closed and not underlay.is_closed and underlay is not avoid:
                    return underlay
            try:
                async with asyncio.timeout(wait):
                    await self._reopened.wait()
            except TimeoutError:
                log.warning(
                    "publisher %s: channel not reopened within %.1f s; looking again",
                    self._endpoint,
                    wait,
                )
                wait = min(_REOPEN_WAIT_MAX, wait * 2)

    def close(self) -> None:
        """Stop watching (the sink is closing its channel)."""
        self._channel.reopen_callbacks.discard(self._reopen)
