"""Confirmed, pipelined, reconnecting AMQP publishing (aio-pika connection, own publish path).

``connection.py``: :class:`AmqpConnection`, the process's one connection and its topology;
``publisher.py``: :class:`AmqpSink`, one endpoint's RabbitMQ sink; ``frames.py``: frame encoding.
"""

from __future__ import annotations

from bridge.amqp.connection import AmqpConnection
from bridge.amqp.publisher import (
    AmqpSink,
    NullHooks,
    Publishable,
    PublisherHooks,
    PublishResult,
)


__all__ = [
    "AmqpConnection",
    "AmqpSink",
    "PublishResult",
    "Publishable",
    "PublisherHooks",
    "NullHooks",
]
