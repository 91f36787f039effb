"""The publisher's public API (implemented in :mod:`bridge.amqp`)."""

from __future__ import annotations

from bridge.amqp import (
    AmqpPublisher,
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
