"""Events the client reports to an optional ``listener=`` callable (metrics, logs).

Each is a frozen, slotted dataclass. The listener is called synchronously from the client's
own task; it must be quick, and an exception it raises is logged and ignored, never fatal.
``Reconnecting.reason`` is one of :data:`RECONNECT_REASONS` (bounded, for metric labels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


__all__ = [
    "RECONNECT_REASONS",
    "SKIP_REASONS",
    "ClientEvent",
    "Listener",
    "Handshaken",
    "Connected",
    "Reconnecting",
    "MessageSkipped",
    "FetchPaused",
    "FetchResumed",
    "SubscriptionFailed",
    "AuthFailed",
    "ServerClosed",
    "POSSIBLE_GAP_REASONS",
    "PossibleGap",
]

RECONNECT_REASONS = frozenset(
    {
        "network",
        "timeout",
        "http_error",
        "malformed",
        "unknown_session",
        "server_advice",
        "server_disconnect",
        "max_interval",
        "auth",
        "quota",
        "buffer_full",
        "transport_fallback",
    }
)

#: ``MessageSkipped.reason`` values: the body is not JSON, not Bayeux, or over the size cap;
#: a message nested deeper than ``protocol.MAX_DEPTH``; an event on a channel the session did
#: not subscribe to (wildcards counted).
SKIP_REASONS = frozenset(
    {"invalid_json", "not_bayeux", "oversize", "too_deep", "unsubscribed_channel"}
)

#: ``PossibleGap.reason`` values.
POSSIBLE_GAP_REASONS = frozenset({"response_lost", "ack_held"})


@dataclass(frozen=True, slots=True)
class Handshaken:
    """A (re)handshake succeeded; ``connection_type`` is the negotiated transport."""

    client_id: str
    connection_type: str


@dataclass(frozen=True, slots=True)
class Connected:
    """The first ``/meta/connect`` after a (re)handshake or a failure succeeded."""


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The connection is being restored after ``delay`` seconds, for ``reason``."""

    reason: str
    delay: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class MessageSkipped:
    """A server message was dropped as unusable (``reason`` in :data:`SKIP_REASONS`).

    ``message`` is the decoded item when there is one (a message too deep, not Bayeux, or over
    the size cap once decoded), so the application can keep it; None for a body that is not
    JSON or a message cut or refused before it was decoded."""

    reason: str
    detail: str
    # Never in repr or ==: it may be nested past the recursion limit or megabytes long.
    message: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class FetchPaused:
    """Fetching stopped: the buffer holds ``max_pending_count`` messages or more."""

    pending_count: int


@dataclass(frozen=True, slots=True)
class FetchResumed:
    """The consumer made room; fetching continues."""

    pending_count: int


@dataclass(frozen=True, slots=True)
class SubscriptionFailed:
    """Subscribing (or resubscribing after a re-handshake) to ``channel`` failed."""

    channel: str
    error: str | None


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """The server rejected the credentials (``error`` is its error string)."""

    error: str | None


@dataclass(frozen=True, slots=True)
class ServerClosed:
    """The server ended the session (``reconnect: none`` or ``/meta/disconnect``)."""

    error: str | None


@dataclass(frozen=True, slots=True)
class PossibleGap:
    """Events may have been lost and neither replay nor acknowledgement brings them back.

    ``response_lost``: a ``/meta/connect`` response (or WebSocket frame) failed or could not be
    decoded on a server without replay or acknowledgement (a replay session re-handshakes
    from the confirmed position instead, an ack session gets them re-sent);
    ``ack_held``: an acknowledged session ended while the client still held its ack (the
    server drops what it kept for that session).
    """

    reason: str
    detail: str | None = None


ClientEvent = (
    Handshaken
    | Connected
    | Reconnecting
    | MessageSkipped
    | FetchPaused
    | FetchResumed
    | SubscriptionFailed
    | AuthFailed
    | ServerClosed
    | PossibleGap
)

#: The type of ``Client(listener=...)``.
Listener = Callable[[ClientEvent], object]
