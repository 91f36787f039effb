"""The CometD auth extension that puts a credential's token on the wire."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from bridge.auth.credential import Credential
from bridge.auth.tokens import Token, TokenError
from bridge.cometd.exceptions import TransportConnectionClosed
from bridge.cometd.extensions import AuthExtension, Headers, Payload


__all__ = ["TokenAuthExtension", "Placement", "TokenUnavailable"]

Placement = Literal["header", "ext"]


class TokenUnavailable(TransportConnectionClosed):
    """No usable token (the token endpoint is down or refuses us): nothing can be sent.

    A transport error on purpose: the client then reconnects with its backoff and reports the
    endpoint down, instead of dying on an extension failure or sending an expired token.
    """


class TokenAuthExtension(AuthExtension):
    """Adds the current token to what the client sends; renews it when the server rejects it.

    ``header``: ``Authorization: Bearer <token>`` on every HTTP request, and on the WebSocket
    upgrade (the client applies outgoing headers when it opens a socket). ``ext``: the token at
    ``ext_path`` (dotted, inside ``ext``) of every ``/meta/*`` message, for servers that
    authenticate the handshake in the message rather than the transport.
    """

    def __init__(
        self,
        credential: Credential,
        placement: Placement = "header",
        ext_path: str = "auth.token",
    ) -> None:
        if placement not in ("header", "ext"):
            raise ValueError(f"placement must be 'header' or 'ext', not {placement!r}")
        path = tuple(ext_path.split("."))
        if not all(path):
            raise ValueError(f"ext_path must be a dotted path, not {ext_path!r}")
        self.credential = credential
        self.placement: Placement = placement
        self.ext_path = path
        # The token last put on the wire: the one a rejection refers to.
        self._sent: Token | None = None

    def __repr__(self) -> str:
        return f"TokenAuthExtension({self.credential.name!r}, placement={self.placement!r})"

    async def outgoing(self, payload: Payload, headers: Headers) -> None:
        try:
            token = await self.credential.get()
        except TokenError as exc:
            raise TokenUnavailable(f"credential {self.credential.name}: {exc}") from exc
        self._sent = token
        value = token.access_token.get_secret_value()
        if self.placement == "header":
            headers["Authorization"] = f"Bearer {value}"
            return
        for message in payload:
            channel = message.get("channel")
            if isinstance(channel, str) and channel.startswith("/meta/"):
                node = message.setdefault("ext", {})
                for key in self.ext_path[:-1]:
                    node = node.setdefault(key, {})
                node[self.ext_path[-1]] = value

    async def incoming(self, payload: Payload, headers: Mapping[str, str] | None = None) -> None:
        return None

    async def authenticate(self) -> None:
        """Called by the client after a real authentication failure: get a different token."""
        await self.credential.invalidate(self._sent)
