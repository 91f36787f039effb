"""The embedded demo CometD source: a :class:`BayeuxServer` that publishes realistic events.

``async with DemoSource("127.0.0.1", 0, rate=5) as src: ...`` serves Bayeux at ``src.url`` and
publishes ``rate`` events per second in total over ``/event/Order__e`` (two thirds) and
``/data/AccountChangeEvent`` (one third). This is what ``cometd-bridge demo`` and the compose
stack stream from.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from typing import Any, Self

from bridge.demo.bayeux_server import BayeuxServer
from bridge.demo.events import ACCOUNT_CHANNEL, DEFAULT_CHANNELS, ORDER_CHANNEL, EventFactory


_WEIGHTS = {ORDER_CHANNEL: 2.0, ACCOUNT_CHANNEL: 1.0}


class DemoSource:
    """A demo Bayeux server plus a background task that publishes events at ``rate``/s."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rate: float = 5.0,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        seed: int | None = None,
        path: str = "/cometd",
        timeout_ms: int = 25_000,
        max_interval_ms: int = 10_000,
        wait_for_subscribers: bool = False,
    ) -> None:
        """``wait_for_subscribers``: start publishing once a client subscribed to every channel
        (the demo: its first event reaches the bridge instead of nobody)."""
        if rate < 0:
            raise ValueError("rate must be >= 0 (0 = publish only on emit())")
        self.host = host
        self.port = port
        self.rate = rate
        self.events = EventFactory(seed)
        unknown = set(channels) - set(self.events.channels)
        if unknown or not channels:
            raise ValueError(f"channels must be among {self.events.channels}, got {channels}")
        self.channels = tuple(channels)
        self.server = BayeuxServer(
            path=path, timeout_ms=timeout_ms, max_interval_ms=max_interval_ms
        )
        self.published: dict[str, int] = dict.fromkeys(self.channels, 0)
        self._rng = random.Random(seed)
        self._wait_for_subscribers = wait_for_subscribers
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The Bayeux URL clients connect to."""
        return self.server.url

    async def start(self) -> None:
        await self.server.start(self.host, self.port)
        self.port = self.server.port
        if self.rate > 0:
            self._task = asyncio.create_task(self._run(), name="demo-source-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def emit(self, channel: str | None = None) -> dict[str, Any]:
        """Publish one event now (on ``channel``, else a weighted random one); returns its data."""
        if channel is None:
            weights = [_WEIGHTS.get(c, 1.0) for c in self.channels]
            channel = self._rng.choices(self.channels, weights)[0]
        data = self.events.next(channel)
        self.server.publish(channel, data)
        self.published[channel] = self.published.get(channel, 0) + 1
        return data

    async def _run(self) -> None:
        # Paced on absolute deadlines so the rate holds even when a tick runs late.
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate
        first: str | None = None
        if self._wait_for_subscribers:
            await self.server.wait_for_subscribers(self.channels)
            first = self.channels[0]  # a predictable first event: the demo's first line
        next_at = loop.time()
        while True:
            self.emit(first)
            first = None
            next_at += period
            delay = next_at - loop.time()
            if delay < -1.0:
                next_at = loop.time()  # far behind (suspended host): do not burst to catch up
            await asyncio.sleep(max(0.0, delay))
