"""A consumer for the failover bench: each delivery's ``data.payload.seq`` (the Salesforce-like
server's envelope), its ``cometd-lease-epoch`` header and its arrival time go into an
:class:`~bench.failover.EpochLog`.

aio-pika is fast enough here: the failover stream runs at a few hundred messages per second,
and the arrival time is taken in the delivery callback, before anything else is done with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aio_pika

from bench.failover import EpochLog
from bench.waiting import wait_until


__all__ = ["EpochConsumer"]

EPOCH_HEADER = "cometd-lease-epoch"


class EpochConsumer:
    """Consumes one existing queue (no ack) and records every delivery by lease epoch."""

    def __init__(self, url: str, queue: str) -> None:
        self._url = url
        self._queue = queue
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._changed = asyncio.Event()
        self.log = EpochLog()
        self.error: BaseException | None = None  # why deliveries stopped being recorded

    async def start(self) -> None:
        self._connection = await aio_pika.connect(self._url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(self._queue, ensure=True)
        await queue.consume(self._on_message, no_ack=True)

    def reset(self) -> None:
        """Start a fresh log (a new stream)."""
        self.log = EpochLog()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        at = time.time()
        try:
            seq = int(json.loads(message.body)["payload"]["seq"])
            epoch = int((message.headers or {})[EPOCH_HEADER])  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError) as exc:  # surfaced by wait_for
            self.error = exc
        else:
            self.log.add(seq, epoch, at)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[EpochLog], bool], within: float) -> bool:
        """Wait (bounded) until ``predicate(log)`` holds; False at the bound."""
        return await wait_until(lambda: predicate(self.log), self._changed, within, self._check)

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"a delivery could not be read: {self.error!r}")
        if self._connection is not None and self._connection.is_closed:
            raise RuntimeError("the consumer's connection closed")

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
