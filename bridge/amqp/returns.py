"""What a sink does with a message the broker returned as unroutable (``mandatory``).

Both RabbitMQ sinks (the fast path and the public-API one) share this policy, so the log
lines, the counting and the choice are the same whichever one runs:

- a dead letter is published again after a back-off (it must reach a queue, never dropped);
- with an alternate exchange configured, the message goes there once;
- otherwise it is settled as returned (counted and logged with its message id).
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from bridge.pipeline.sink import Publishable, retries_until_routed


if TYPE_CHECKING:
    from bridge.amqp.sink_base import PublisherHooks


__all__ = ["ReturnAction", "on_returned"]


class ReturnAction(enum.Enum):
    RETRY = "retry"  # publish again after a back-off (a dead letter)
    ALTERNATE = "alternate"  # publish to the alternate exchange
    RETURNED = "returned"  # settle the message as returned


def on_returned(
    msg: Publishable,
    *,
    exchange: str,
    alternate: str | None,
    code: int,
    text: str,
    endpoint: str,
    hooks: PublisherHooks,
    log: logging.Logger,
) -> ReturnAction:
    """Log and count a return of ``msg`` published to ``exchange``; say what to do next."""
    if retries_until_routed(msg):
        log.warning(
            "unroutable dead letter returned by the broker (%d %s): endpoint=%s "
            "message_id=%s exchange=%s; publishing it again",
            code,
            text,
            endpoint,
            msg.message_id,
            exchange,
        )
        hooks.on_failure("unroutable", 1)
        return ReturnAction.RETRY
    to_alternate = alternate is not None and exchange != alternate
    log.warning(
        "unroutable message returned by the broker (%d %s): endpoint=%s message_id=%s "
        "exchange=%s routing_key=%s action=%s",
        code,
        text,
        endpoint,
        msg.message_id,
        exchange,
        msg.routing_key,
        "alternate" if to_alternate else "logged",
    )
    if exchange == msg.exchange:  # count once per message, not again from the AE
        hooks.on_unroutable("alternate" if to_alternate else "logged")
    return ReturnAction.ALTERNATE if to_alternate else ReturnAction.RETURNED
