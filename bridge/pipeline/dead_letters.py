"""Dead letters: a message the bridge cannot publish to its exchange, as an AMQP message for
the endpoint's dead-letter exchange (no I/O).

A dead letter carries the message's bytes (the routed body when routing succeeded, else the
Bayeux message as received, encoded as JSON) up to :data:`MAX_BODY_BYTES`, and headers naming
the endpoint, the channel, the reason and the error. Its routing key is
``<endpoint>.<reason>`` on a topic exchange, so a queue can take every dead letter (``#``), one
endpoint's (``orders.#``) or one reason's (``*.nacked``). It is published with
``retry_until_routed`` (see :func:`bridge.pipeline.sink.retries_until_routed`): never
re-routed, never given up on, so the replay position moves over the message only once its
dead letter is confirmed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.logging import redact_text
from bridge.summary import summarize


__all__ = [
    "DEAD_LETTER_EXCHANGE_TYPE",
    "DEFAULT_DEAD_LETTER_EXCHANGE",
    "ERROR_MAX_CHARS",
    "MAX_BODY_BYTES",
    "DeadLetter",
    "dead_letter",
]

DEAD_LETTER_EXCHANGE_TYPE: Final = "topic"
# The default exchange; the bridge also declares a durable queue of this name bound to it.
DEFAULT_DEAD_LETTER_EXCHANGE: Final = "cometd.dead-letter"
#: Longest body kept; a longer one is cut and flagged (``cometd-dead-letter-truncated``).
MAX_BODY_BYTES: Final = 1024 * 1024
#: Longest ``cometd-dead-letter-error`` header value, in characters (after redaction).
ERROR_MAX_CHARS: Final = 1000
_CHANNEL_MAX_CHARS: Final = 1000

HEADER_ENDPOINT: Final = "cometd-endpoint"
HEADER_CHANNEL: Final = "cometd-channel"
HEADER_REASON: Final = "cometd-dead-letter-reason"
HEADER_ERROR: Final = "cometd-dead-letter-error"
HEADER_TRUNCATED: Final = "cometd-dead-letter-truncated"
HEADER_ORIGINAL_SIZE: Final = "cometd-dead-letter-original-size"


@dataclass(slots=True)
class DeadLetter:
    """A :class:`~bridge.pipeline.sink.Publishable` for the dead-letter exchange, with what
    settlement needs once it is confirmed (the failed message's channel, replay id, ack tag)."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str
    timestamp: float
    reason: str
    channel: str | None
    replay_id: int | str | None
    ack_tag: Any = None
    event_time: str | None = None
    retry_until_routed: bool = field(default=True, init=False)


def dead_letter(
    *,
    exchange: str,
    endpoint: str,
    reason: str,
    error: str,
    channel: Any,
    replay_id: int | str | None,
    now: float,
    body: bytes | None = None,
    message: Any = None,
    message_id: str | None = None,
    ack_tag: Any = None,
    event_time: str | None = None,
) -> DeadLetter:
    """The dead letter for a message that failed for ``reason``: ``body`` when routing
    produced one, else ``message`` (the decoded Bayeux message) encoded as JSON."""
    summarized = False
    if body is None:
        body, summarized = _encode(message)
    size = len(body)
    cut = size > MAX_BODY_BYTES
    if cut:
        body = bytes(body[:MAX_BODY_BYTES])
    channel_text = channel if isinstance(channel, str) else summarize(channel, limit=200)
    if len(channel_text) > _CHANNEL_MAX_CHARS:
        channel_text = channel_text[:_CHANNEL_MAX_CHARS] + "…"
    error_text = redact_text(error)
    if len(error_text) > ERROR_MAX_CHARS:
        error_text = error_text[:ERROR_MAX_CHARS] + "…"
    headers: dict[str, Any] = {
        HEADER_ENDPOINT: endpoint,
        HEADER_CHANNEL: channel_text,
        HEADER_REASON: reason,
        HEADER_ERROR: error_text,
    }
    if cut or summarized:
        headers[HEADER_TRUNCATED] = True
    if cut:
        headers[HEADER_ORIGINAL_SIZE] = size
    # Stable for the same failed message, so a dead letter published again after a lost
    # confirm carries the same id (consumers can de-duplicate).
    identity = message_id
    if identity is None:
        identity = f"{channel_text}\0{replay_id}\0{hashlib.sha256(body).hexdigest()}"
    digest = hashlib.sha256(f"{endpoint}\0{reason}\0{identity}".encode()).hexdigest()[:40]
    return DeadLetter(
        exchange=exchange,
        routing_key=f"{endpoint}.{reason}",
        body=body,
        headers=headers,
        message_id=f"dead-letter-{digest}",
        timestamp=now,
        reason=reason,
        channel=channel if isinstance(channel, str) else None,
        replay_id=replay_id,
        ack_tag=ack_tag,
        event_time=event_time,
    )


def _encode(message: Any) -> tuple[bytes, bool]:
    """``message`` as compact JSON; a message JSON cannot encode (nested past the recursion
    limit, or not JSON data) as a bounded summary, flagged as truncated."""
    try:
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode(), False
    except (RecursionError, TypeError, ValueError):
        return summarize(message, limit=MAX_BODY_BYTES // 4, depth=64).encode(), True
