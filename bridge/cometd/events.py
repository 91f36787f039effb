"""Events the client reports to an optional ``listener=`` callable (metrics, logs).

Each is a frozen, slotted dataclass. The listener is called synchronously from the client's
own task; it must be quick, and an exception it raises is logged and ignored, never fatal.
``Reconnecting.reason`` is one of :data:`RECONNECT_REASONS` (bounded, for metric labels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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

#: ``MessageSkipped.reason`` values: the body is not JSON, not Bayeux, or over the size cap.
SKIP_REASONS = frozenset({"invalid_json", "not_bayeux", "oversize"})


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
    """A server message was dropped as unusable (``reason`` in :data:`SKIP_REASONS`)."""

    reason: str
    detail: str


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
)

#: The type of ``Client(listener=...)``.
Listener = Callable[[ClientEvent], object]
