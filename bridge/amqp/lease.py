"""One endpoint's lease in RabbitMQ (``BRIDGE_COORDINATION=rabbitmq``): the token pattern.

Each endpoint has a durable lease queue with ``x-single-active-consumer``. Every replica that
wants the endpoint consumes from it with manual acks and prefetch 1; the broker delivers only
to the one active consumer. The queue holds a token message; the replica holding the token
unacked is the owner. When the owner's channel or connection closes, the broker requeues the
token and delivers it to the next registered candidate, which thereby becomes the owner.

Why this is safe:

- The lease channel lives on the SAME AMQP connection the endpoint publishes on. A replica
  that lost its lease by a connection loss has lost its publish path in the same event; the
  channel's close is the signal to stop the CometD session at once (:attr:`Lease.lost`).
- Exclusivity comes from single-active-consumer plus prefetch 1, not from the token being
  unique: a second token (two replicas seeding at once) stays ready in the queue, because
  only the active consumer receives, and it holds at most one unacked message. The queue's
  ``x-max-length: 1`` with ``overflow: reject-publish`` keeps at most one ready token, so a
  late seed is refused by the broker (a nack) and changes nothing.
- A graceful release closes the lease channel: the unacked token is requeued and the next
  candidate receives it (a cancel alone would leave the token unacked on our channel).

The epoch that fences a deposed owner's late messages is kept with the endpoint's positions
(:mod:`bridge.positions.rabbitmq_store`): each new owner increments it before subscribing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import aio_pika.abc
import aiormq
import aiormq.abc
from aiormq.exceptions import DeliveryError
from pamqp import commands as spec


__all__ = ["LEASE_QUEUE_ARGUMENTS", "Lease", "lease_queue", "underlay_connection"]

log = logging.getLogger(__name__)

LEASE_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {
    "x-single-active-consumer": True,
    "x-max-length": 1,
    "x-overflow": "reject-publish",
}
_TOKEN: Final = b"cometd-bridge lease token"
_CLOSE_HANDSHAKE: Final = 5.0


def lease_queue(endpoint: str) -> str:
    """The name of ``endpoint``'s lease queue (the same on every replica)."""
    return f"cometd-bridge.lease.{endpoint}"


def underlay_connection(
    connection: aio_pika.abc.AbstractRobustConnection,
) -> aiormq.abc.AbstractConnection:
    """The current aiormq connection under aio-pika's robust one.

    Lease and position channels are opened on it directly, NOT as robust channels: after a
    connection loss they stay closed (aio-pika would silently restore a robust channel and its
    consumer), so a replica re-enters as a candidate only through its coordinator.
    """
    transport = getattr(connection, "transport", None)
    if transport is None or transport.connection.is_closed:
        raise ConnectionError("the AMQP connection is down")
    conn: aiormq.abc.AbstractConnection = transport.connection
    return conn


class Lease:
    """A candidacy for one endpoint's lease on one AMQP connection.

    :meth:`enter` registers as a candidate; :attr:`acquired` is set when the token arrives
    (this replica is then the owner); :attr:`closed` is set when the lease channel closes for
    any reason. ``on_lost`` is called synchronously, from the channel's close, when the
    channel closes while the token is held and :meth:`release` was not asked for: the owner
    must stop at once.
    """

    def __init__(self, endpoint: str, *, on_lost: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        self.queue = lease_queue(endpoint)
        self.acquired = asyncio.Event()
        self.closed = asyncio.Event()
        self._on_lost = on_lost
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._held = False
        self._releasing = False
        self.lost = False

    @property
    def held(self) -> bool:
        """The token is held on an open channel."""
        return self._held and not self.closed.is_set()

    async def enter(self, connection: aiormq.abc.AbstractConnection) -> None:
        """Declare the lease queue, seed a token if none is ready, and register as a
        candidate. Raises on a broker error (the caller retries with backoff)."""
        channel = await connection.channel(publisher_confirms=True)
        self._channel = channel
        channel.closing.add_done_callback(self._channel_closed)
        await channel.basic_qos(prefetch_count=1)
        declared = await channel.queue_declare(
            self.queue, durable=True, arguments=LEASE_QUEUE_ARGUMENTS
        )
        if declared.message_count == 0:
            await self._seed(channel)
        await channel.basic_consume(self.queue, self._on_token, no_ack=False)

    async def _seed(self, channel: aiormq.abc.AbstractChannel) -> None:
        # No ready token: either an owner holds it unacked, or the queue is new. Publishing one
        # is harmless either way (see the module doc); a ready one already there makes the
        # broker refuse this one.
        properties = spec.Basic.Properties(delivery_mode=2)
        try:
            await channel.basic_publish(_TOKEN, routing_key=self.queue, properties=properties)
        except DeliveryError:
            log.debug("lease %s: a token is already there", self.queue)

    async def _on_token(self, message: aiormq.abc.DeliveredMessage) -> None:
        self._held = True
        self.acquired.set()

    def _channel_closed(self, _future: asyncio.Future[Any]) -> None:
        was_held = self._held
        self._held = False
        self.closed.set()
        if was_held and not self._releasing:
            self.lost = True
            if self._on_lost is not None:
                self._on_lost()

    async def release(self) -> None:
        """Give the lease up (idempotent): close the channel, so the broker requeues the
        token for the next candidate. Call only after the endpoint's work is settled."""
        self._releasing = True
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), _CLOSE_HANDSHAKE)
        self._held = False
        self.closed.set()
