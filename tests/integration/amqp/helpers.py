"""Shared helpers for the publisher's integration tests: messages, topology, a counting consumer."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aio_pika
import aio_pika.abc

from bridge.amqp import AmqpConnection, PublishResult
from bridge.amqp.connection import EndpointSink as Sink
from bridge.routing import RoutedMessage
from tests.fixtures.rabbitmq import unique_name


def message(
    exchange: str, i: int, *, body: bytes | None = None, mid: str | None = None
) -> RoutedMessage:
    return RoutedMessage(
        exchange=exchange,
        routing_key="event.Order__e",
        body=body if body is not None else b'{"n":%d,"pad":"%s"}' % (i, b"x" * 150),
        headers={
            "cometd-endpoint": "ep",
            "cometd-channel": "/event/Order__e",
            "cometd-id": str(i),
            "replay-id": i,
        },
        message_id=mid or f"ep:/event/Order__e:r{i}",
        timestamp=1_700_000_000.0 + i,
        channel="/event/Order__e",
        replay_id=i,
    )


@dataclass
class RecordingHooks:
    """PublisherHooks that remember what they were told."""

    failures: Counter[str] = field(default_factory=Counter)
    failure_times: list[float] = field(default_factory=list)  # loop.time() of each report
    unroutable: Counter[str] = field(default_factory=Counter)
    redelivered: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_failure(self, reason: str, count: int) -> None:
        self.failures[reason] += count
        self.failure_times.append(asyncio.get_running_loop().time())
        self._changed.set()

    async def wait_failures(self, reason: str, n: int, within: float = 60) -> None:
        """Return once ``n`` failures with ``reason`` were reported; fail saying how many."""
        try:
            async with asyncio.timeout(within):
                while self.failures[reason] < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.failures[reason]} of {n} {reason!r} failures reported within {within}s"
                f" (all: {dict(self.failures)})"
            ) from None

    def on_unroutable(self, action: str) -> None:
        self.unroutable[action] += 1

    def on_redelivered(self, count: int) -> None:
        self.redelivered += count


class Results:
    """Collects ``done`` callbacks; ``wait_for(n)`` returns once n messages are done."""

    def __init__(self) -> None:
        self.by_id: dict[str, PublishResult] = {}
        self.calls = 0
        self._target = 0
        self._reached = asyncio.Event()

    def __call__(self, msg: RoutedMessage, result: PublishResult) -> None:
        self.calls += 1
        self.by_id[msg.message_id] = result
        if self.calls >= self._target:
            self._reached.set()

    async def wait_for(self, n: int, within: float = 60) -> None:
        self._target = n
        if self.calls < n:
            self._reached.clear()
            async with asyncio.timeout(within):
                await self._reached.wait()


class FullWindow:
    """Keeps a sink's window full while a fault lands: submits in blocks of 500 and waits only
    for room (an ack), never for time. ``fault_landed()`` once the fault is in; the producer
    then goes on until ``at_least`` messages were submitted. Results go to ``results``."""

    def __init__(self, sink: Sink, exchange: str, results: Results, *, at_least: int) -> None:
        self.sink, self.exchange, self.results, self.at_least = sink, exchange, results, at_least
        self.submitted = 0
        self._landed = asyncio.Event()
        self._room = asyncio.Event()
        self._task = asyncio.create_task(self._produce())

    def fault_landed(self) -> None:
        self._landed.set()

    async def finished(self, within: float = 60) -> None:
        """Return once the producer stopped (the fault landed and enough were submitted)."""
        async with asyncio.timeout(within):
            await self._task

    def _done(self, msg: RoutedMessage, result: PublishResult) -> None:
        self.results(msg, result)
        if self.sink.outstanding < 2000:
            self._room.set()

    async def _produce(self) -> None:
        while not self._landed.is_set() or self.submitted < self.at_least:
            for _ in range(500):
                self.sink.submit(message(self.exchange, self.submitted), self._done)
                self.submitted += 1
            self._room.clear()
            if self.sink.outstanding >= 2000:
                await self._room.wait()


class Collector:
    """Consumes a queue and counts every message_id (duplicates included)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.messages: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}
        self._arrived = asyncio.Event()

    async def __call__(self, msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        assert msg.message_id is not None
        self.counts[msg.message_id] += 1
        self.messages.setdefault(msg.message_id, msg)
        self._arrived.set()

    async def _until(self, done: Callable[[], bool], within: float) -> None:
        async with asyncio.timeout(within):
            while not done():
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_for(self, ids: set[str], within: float = 60) -> None:
        """Return once every id in ``ids`` has arrived at least once."""
        await self._until(lambda: ids <= self.counts.keys(), within)

    async def wait_count(self, message_id: str, n: int, within: float = 60) -> None:
        """Return once ``message_id`` has arrived ``n`` times."""
        await self._until(lambda: self.counts[message_id] >= n, within)

    @property
    def duplicates(self) -> int:
        return sum(c - 1 for c in self.counts.values())


async def bound_queue(
    conn: aio_pika.abc.AbstractRobustConnection,
    exchange: str,
    *,
    arguments: dict[str, object] | None = None,
) -> aio_pika.abc.AbstractQueue:
    ch = await conn.channel()
    queue = await ch.declare_queue(unique_name("q"), auto_delete=True, arguments=arguments)  # type: ignore[arg-type]
    await queue.bind(exchange, "#")
    return queue


async def started_publisher(amqp_url: str, *, name: str | None = None) -> AmqpConnection:
    pub = AmqpConnection(
        amqp_url, connection_name=name or unique_name("bridge"), publish_timeout=10
    )
    await pub.start()
    return pub
