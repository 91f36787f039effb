"""Confirmed, pipelined, reconnecting AMQP publishing (aio-pika connection, own publish path)."""

from __future__ import annotations

from bridge.amqp.connection import AmqpPublisher
from bridge.amqp.endpoint import (
    EndpointPublisher,
    NullHooks,
    Publishable,
    PublisherHooks,
    PublishResult,
)


__all__ = [
    "AmqpPublisher",
    "EndpointPublisher",
    "PublishResult",
    "Publishable",
    "PublisherHooks",
    "NullHooks",
]
