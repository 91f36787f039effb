"""The Source protocol: where an endpoint's messages come from, and the CometD source.

A source opens sessions (:meth:`Source.open`), subscribes channels, hands out received messages
in batches (:meth:`Source.receive_many`) and takes back, per message, the acknowledgement the
sink's confirm releases (:meth:`Source.ack_tag_of` at receive, :meth:`Source.confirm` after the
sink settled). :class:`CometdSource` implements it over :class:`bridge.cometd.Client`; another
kind of source (e.g. the Salesforce Pub/Sub API) is one more module implementing the protocol.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from bridge.cometd import Client, ConnectionType
from bridge.cometd.events import Listener
from bridge.cometd.ext import AckExtension, AckTag, ReplayExtension
from bridge.cometd.extensions import AuthExtension, Extension
from bridge.tls import client_context


if TYPE_CHECKING:
    from bridge.settings import Endpoint


__all__ = ["ClientFactory", "CometdSource", "Source"]

try:  # optional speed-up, see the Router comment in EndpointWorker.__init__
    _JSON_LOADS: Callable[[str], Any] = importlib.import_module("orjson").loads
except ImportError:
    _JSON_LOADS = json.loads

ClientFactory = Callable[..., Client]


class Source(Protocol):
    """One endpoint's upstream: one session at a time, its messages in batches."""

    async def open(self, url: str) -> None:
        """Start a session (handshake); raises when the server refuses or is unreachable."""

    async def subscribe(self, channel: str) -> None:
        """Subscribe the open session to ``channel``; raises when the server refuses."""

    async def receive_many(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` received messages, waiting for at least one."""

    @property
    def pending_count(self) -> int:
        """Received and buffered, not yet handed out (0 without a session)."""

    @property
    def subscriptions(self) -> set[str]:
        """The channels the session is subscribed to."""

    @property
    def connection_type(self) -> str | None:
        """How the session talks to the server (for logs and ``/status``)."""

    @property
    def replay_active(self) -> bool:
        """The source resumes from positions and the current (or last) server supports it."""

    @property
    def ack_active(self) -> bool:
        """The source acknowledges and the current (or last) server supports it."""

    @property
    def ack_shed(self) -> int | None:
        """Messages left with the server while the buffer was full (None: no acks)."""

    def set_start(self, channel: str, start: int) -> None:
        """Where ``channel`` resumes while it has no stored position (e.g. after a gap)."""

    def ack_tag_of(self, message: dict[str, Any]) -> AckTag | None:
        """The acknowledgement correlation of a received message (None: nothing to ack)."""

    def confirm(self, tag: AckTag | None) -> None:
        """The sink settled the message tagged ``tag``: the source may release it."""

    async def close(self) -> None:
        """End the session politely; what it received stays readable until :meth:`release`."""

    def release(self) -> None:
        """Forget the ended session (its buffer included)."""


class CometdSource:
    """A :class:`Source` over the CometD :class:`~bridge.cometd.Client`: a new client per
    session, the endpoint's extensions (auth, replay, ack) shared by every session.

    ``replay_start`` (None: no replay) is where a channel without a position starts;
    ``position(channel)`` the stored position a (re)subscription resumes from, read when the
    subscribe is sent, after awaiting ``settle`` (the consumer settling what it holds).
    ``ack`` turns on the acknowledgement extension.
    """

    def __init__(
        self,
        config: Endpoint,
        *,
        replay_start: int | None,
        position: Callable[[str], int | None],
        settle: Callable[[], Awaitable[None]] | None = None,
        ack: bool,
        extensions: Sequence[Extension],
        auth: AuthExtension | None,
        listener: Listener,
        client_factory: ClientFactory = Client,
    ) -> None:
        self._config = config
        # Created once and reused by every session: the replay extension reads the confirmed
        # positions at send time, the ack extension starts over at each handshake.
        self._replay = (
            ReplayExtension(position, replay_start, settle) if replay_start is not None else None
        )
        self._ack = AckExtension() if ack else None
        self._extensions = [
            *extensions,
            *(e for e in (self._replay, self._ack) if e is not None),
        ]
        self._auth = auth
        self._listener = listener
        self._client_factory = client_factory
        self._client: Client | None = None
        # The endpoint's private CA (ca_file) for both transports; None: the system's CAs.
        self._ssl = client_context(config.ca_file)

    async def open(self, url: str) -> None:
        config = self._config
        client = self._client_factory(
            url,
            [ConnectionType(t) for t in config.connection_types],
            connection_timeout=config.connection_timeout,
            max_pending_count=config.max_pending_count,
            max_pending_bytes=config.max_pending_bytes,
            extensions=self._extensions,
            auth=self._auth,
            headers=dict(config.headers),
            ssl=self._ssl,
            listener=self._listener,
            json_loads=_JSON_LOADS,
        )
        self._client = client
        await client.open()

    async def subscribe(self, channel: str) -> None:
        await self._session().subscribe(channel)

    async def receive_many(self, limit: int) -> list[dict[str, Any]]:
        return await self._session().receive_many(limit)

    @property
    def pending_count(self) -> int:
        client = self._client
        return client.pending_count if client is not None else 0

    @property
    def subscriptions(self) -> set[str]:
        client = self._client
        return client.subscriptions if client is not None else set()

    @property
    def connection_type(self) -> str | None:
        client = self._client
        connection_type = client.connection_type if client is not None else None
        return None if connection_type is None else str(connection_type)

    @property
    def replay_active(self) -> bool:
        return self._replay is not None and self._replay.supported is True

    @property
    def ack_active(self) -> bool:
        return self._ack is not None and self._ack.supported is True

    @property
    def ack_shed(self) -> int | None:
        return None if self._ack is None else self._ack.messages_shed

    def set_start(self, channel: str, start: int) -> None:
        if self._replay is not None:
            self._replay.set_start(channel, start)

    def ack_tag_of(self, message: dict[str, Any]) -> AckTag | None:
        return None if self._ack is None else self._ack.ack_tag_of(message)

    def confirm(self, tag: AckTag | None) -> None:
        if self._ack is not None:
            self._ack.confirm(tag)

    async def close(self) -> None:
        client = self._client
        if client is not None:
            await client.close()

    def release(self) -> None:
        self._client = None

    def _session(self) -> Client:
        client = self._client
        if client is None:
            raise RuntimeError("no open session")
        return client
