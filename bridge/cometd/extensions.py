"""Extension hooks: inspect or alter every payload (a list of messages) and its HTTP headers.

Order (as in aiocometd): outgoing payloads pass through ``extensions`` then ``auth``;
incoming payloads through ``auth`` then ``extensions``. Incoming headers are None on
WebSocket. On WebSocket, headers set by ``outgoing`` are applied when the socket is opened
(each upgrade, so refreshed credentials reach a new socket).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, MutableMapping
from typing import Any


__all__ = ["Payload", "Headers", "Extension", "AuthExtension"]

#: A list of Bayeux messages, as sent or received in one request/response/frame.
Payload = list[dict[str, Any]]
Headers = MutableMapping[str, str]


class Extension(ABC):
    """Base class for extensions; override both methods (they may do nothing)."""

    @abstractmethod
    async def outgoing(self, payload: Payload, headers: Headers) -> None:
        """Process an outgoing payload and the request's headers, in place, before sending."""

    @abstractmethod
    async def incoming(self, payload: Payload, headers: Mapping[str, str] | None = None) -> None:
        """Process a received payload, in place, before the client looks at it."""

    # Optional capability: keep the session alive while the client's buffer is full.

    def can_shed(self) -> bool:
        """Whether, right now, this extension can keep the session alive while the client's
        buffer is full (default: no).

        True promises that while :meth:`set_shedding` is on, :meth:`incoming` removes from each
        payload the data messages the client never received, and only those the server is
        sure to send again (e.g. unacknowledged ones). The client then keeps sending
        ``/meta/connect`` at a pace inside the server's maxInterval instead of stopping, so the
        session, and everything the server keeps for it, survives a long stall.
        """
        return False

    def set_shedding(self, on: bool) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Called by the client around each keep-alive ``/meta/connect`` (on, then off) when
        :meth:`can_shed` said yes."""

    # Optional capabilities: what a lost response costs (default: the events are gone).

    def resumes_by_resubscribing(self) -> bool:
        """Whether a new session's subscriptions resume from a confirmed position (replay):
        then the client re-handshakes after any lost ``/meta/connect`` response."""
        return False

    def holds_ack(self) -> bool:
        """Whether the server still keeps messages of this session for an ack the client has
        not sent: then the client never disconnects politely (that would drop them)."""
        return False

    def awaits_resend(self) -> bool:
        """Whether the server keeps messages of this session the client never received
        (e.g. shed while paused): a session ending now may lose them."""
        return False


class AuthExtension(Extension):
    """An extension that can renew its credentials."""

    @abstractmethod
    async def authenticate(self) -> None:
        """Obtain fresh credentials; called after the server rejected the current ones.

        The client follows it with a fresh handshake (not a resend of the failed request).
        """
