"""Errors raised by the CometD client.

The names are the ones aiocometd users already know (``aiocometd.exceptions``), rooted at
:class:`CometdError`::

    CometdError (alias AiocometdException)
    ├── ClientError
    │   └── ClientInvalidOperation        operation not allowed in the client's state
    ├── TransportError                    the network or the server's HTTP layer failed
    │   ├── TransportInvalidOperation     operation not allowed in the transport's state
    │   ├── TransportTimeoutError         a deadline passed (also: connection_timeout)
    │   ├── TransportConnectionClosed     the connection broke or could not be made
    │   │   └── WebSocketUpgradeRefused   the server refused the WebSocket upgrade
    │   ├── HTTPStatusError               the server answered with a non-200 status
    │   └── MalformedResponseError        the body is not JSON / not Bayeux / over a size cap
    └── ServerError                       the server answered ``successful: false``
                                          (or closed the session)
"""

from __future__ import annotations

from typing import Any


__all__ = [
    "CometdError",
    "AiocometdException",
    "ClientError",
    "ClientInvalidOperation",
    "TransportError",
    "TransportInvalidOperation",
    "TransportTimeoutError",
    "TransportConnectionClosed",
    "WebSocketUpgradeRefused",
    "HTTPStatusError",
    "MalformedResponseError",
    "ServerError",
]


class CometdError(Exception):
    """Root of every error this package raises."""


#: aiocometd's name for the root, so ``except AiocometdException`` keeps working.
AiocometdException = CometdError


class ClientError(CometdError):
    """The client was used wrongly or cannot do what was asked."""


class ClientInvalidOperation(ClientError):
    """The operation is not allowed in the client's current state (e.g. closed)."""


class TransportError(CometdError):
    """The transport failed: network error, HTTP error, unusable response."""


class TransportInvalidOperation(TransportError):
    """The operation is not allowed in the transport's current state."""


class TransportTimeoutError(TransportError):
    """A deadline passed, or the connection could not be restored within connection_timeout."""


class TransportConnectionClosed(TransportError):
    """The connection to the server broke or could not be established."""


class WebSocketUpgradeRefused(TransportConnectionClosed):
    """The server refused the WebSocket upgrade (the client may fall back to long-polling)."""


class HTTPStatusError(TransportError):
    """The server answered with an HTTP status other than 200."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(f"HTTP status {status}" + (f": {detail}" if detail else ""))
        self.status = status


class MalformedResponseError(TransportError):
    """The response is not JSON, not a Bayeux message list, or larger than a size cap."""


class ServerError(CometdError):
    """The server refused a request or closed the session.

    ``response`` is the server's message; ``error_code``, ``error_args`` and ``error_message``
    are parsed from its ``error`` field (Bayeux grammar ``code:args:message``).
    """

    def __init__(self, message: str, response: dict[str, Any] | None) -> None:
        super().__init__(message, response)
        self.message = message
        self.response = response

    def __str__(self) -> str:
        error = self.error
        return f"{self.message} ({error})" if error else self.message

    @property
    def error(self) -> str | None:
        """The raw ``error`` field of the response, if any."""
        if not self.response:
            return None
        value = self.response.get("error")
        return value if isinstance(value, str) else None

    @property
    def error_code(self) -> int | None:
        """The numeric code of the error (e.g. 402), or None."""
        return _split_error(self.error)[0]

    @property
    def error_args(self) -> list[str] | None:
        """The comma-separated arguments of the error, or None."""
        return _split_error(self.error)[1] if self.error is not None else None

    @property
    def error_message(self) -> str | None:
        """The human-readable part of the error, or None."""
        return _split_error(self.error)[2] if self.error is not None else None


def _split_error(error: str | None) -> tuple[int | None, list[str], str | None]:
    # Kept here (not imported from protocol) so this module has no dependencies; protocol's
    # parse_error delegates to it so there is one parser.
    if error is None:
        return None, [], None
    parts = error.split(":", 2)
    if len(parts) == 3 and len(parts[0]) == 3 and parts[0].isdigit():
        args = [arg for arg in parts[1].split(",") if arg] if parts[1] else []
        return int(parts[0]), args, parts[2]
    return None, [], error
