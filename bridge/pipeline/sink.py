"""The Sink protocol: where routed messages go, one confirm per message.

The pipeline depends on this protocol only; :class:`bridge.amqp.publisher.AmqpSink` is the
RabbitMQ implementation. A new kind of sink is one module implementing :class:`Sink`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar


__all__ = ["Publishable", "PublishResult", "Sink", "retries_until_routed"]


class PublishResult(enum.Enum):
    """How a message left the sink."""

    CONFIRMED = "confirmed"  # routed and confirmed by the broker
    ALTERNATE = "alternate"  # returned as unroutable, re-published to the alternate exchange
    RETURNED = "returned"  # returned as unroutable, nowhere else to go: counted and logged
    # Could not be encoded as AMQP frames when its turn came (never reached the broker);
    # logged by the sink, counted by the caller. Rare: ``submit`` rejects what it can foresee.
    UNPUBLISHABLE = "unpublishable"
    # Nacked by the broker ``max_nacks`` times (a sink built with that limit): not retried
    # again; the caller dead-letters it.
    REFUSED = "refused"


class Publishable(Protocol):
    """What a sink needs of a message (``bridge.routing.RoutedMessage`` has it)."""

    @property
    def exchange(self) -> str: ...

    @property
    def routing_key(self) -> str: ...

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    @property
    def message_id(self) -> str: ...

    @property
    def timestamp(self) -> float: ...


def retries_until_routed(msg: object) -> bool:
    """A message with a true ``retry_until_routed`` attribute (a dead letter) is published
    again after a back-off when the broker returns it unroutable or nacks it, however often,
    and never re-routed to the alternate exchange: it has nowhere else to go."""
    return getattr(msg, "retry_until_routed", False) is True


M = TypeVar("M", bound=Publishable)


class Sink(Protocol):
    """Takes messages without blocking and reports each one settled exactly once."""

    def submit(self, msg: M, done: Callable[[M, PublishResult], None]) -> None:
        """Queue ``msg``; ``done(msg, result)`` runs once, from the event loop, when it is
        settled. Raises ``ValueError``/``TypeError`` at once for a message that can never be
        sent, and ``RuntimeError`` once the sink is closed."""

    @property
    def ready(self) -> bool:
        """The sink can deliver now (e.g. its channel is open)."""

    @property
    def inflight(self) -> int:
        """Sent, awaiting the confirm."""

    async def wait_idle(self) -> None:
        """Return once every accepted message is settled."""

    async def close(self, deadline: float = 10.0) -> int:
        """Stop taking messages, wait up to ``deadline`` s; return how many were left."""
