"""The process's one robust AMQP connection: topology, per-endpoint sinks, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aio_pika.abc
from pamqp.common import FieldTable
from yarl import URL

from bridge.amqp.public_publisher import PublicApiPublisher
from bridge.amqp.publisher import AmqpSink, PublisherHooks
from bridge.amqp.setup_step import TopologyError, run_step
from bridge.amqp.sink_base import CLOSE_HANDSHAKE


__all__ = ["AmqpConnection", "TopologyError"]

log = logging.getLogger(__name__)

StateCallback = Callable[[bool], None]
EndpointSink = AmqpSink | PublicApiPublisher


class AmqpConnection:
    """Owns ONE ``connect_robust`` connection and every endpoint's publishing channel.

    aio-pika restores channels through weak references (aio-pika#536), so strong references
    to every channel live here for the connection's lifetime. ``on_state(connected)`` reports
    connection loss and recovery (the ``amqp_connected`` gauge).
    """

    def __init__(
        self,
        url: str,
        *,
        connection_name: str,
        publish_timeout: float = 10.0,
        on_state: StateCallback | None = None,
        sink_class: type[EndpointSink] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``sink_class``: the per-endpoint sink implementation (see ``sink_factory``; the fast
        one by default). ``ssl_context``: for ``amqps://`` (a private CA, a client certificate;
        see ``bridge.tls``), None for the library's default."""
        self._ssl_context = ssl_context
        # Several comma-separated URLs (a broker cluster): tried in order at start; after a loss
        # aio-pika's reconnect loop is pointed at the next one every reconnect interval.
        self._urls = [u.strip() for u in url.split(",") if u.strip()] or [url]
        self._url_index = 0
        self._rotation: asyncio.Task[None] | None = None
        self._url = self._urls[0]
        self._sink_class = sink_class
        self._connection_name = connection_name
        self._publish_timeout = publish_timeout
        self._on_state = on_state
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._endpoints: dict[str, EndpointSink] = {}
        # Every exchange declared, with its arguments: declared again if the broker reports one
        # missing (deleted while we run), so publishing resumes instead of failing forever.
        self._declared: dict[str, tuple[str, str | None, bool]] = {}

    async def start(self) -> None:
        """Connect; raises the connection error if no broker is reachable at start."""
        conn: aio_pika.abc.AbstractRobustConnection | None = None
        for index, url in enumerate(self._urls):
            try:
                conn = await aio_pika.connect_robust(
                    url,
                    client_properties={"connection_name": self._connection_name},
                    ssl_context=self._ssl_context,
                )
            except Exception:
                if index == len(self._urls) - 1:
                    raise
                log.warning(
                    "AMQP broker %d of %d unreachable; trying the next", index + 1, len(self._urls)
                )
                continue
            self._url_index = index
            break
        assert conn is not None
        conn.close_callbacks.add(self._on_close)
        conn.reconnect_callbacks.add(self._on_reconnect)
        self._connection = conn
        self._report(True)

    @property
    def connection(self) -> aio_pika.abc.AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError("AmqpConnection.start() has not been called")
        return self._connection

    @property
    def connected(self) -> bool:
        conn = self._connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    async def declare_exchange(
        self,
        name: str,
        type: str = "topic",
        *,
        alternate_exchange: str | None = None,
        auto_delete: bool = False,
    ) -> None:
        """Declare a durable exchange (with an ``alternate-exchange`` argument when given).

        Done on a short-lived channel: a failed declare closes its channel, which must not
        be a publishing one.
        """
        self._declared[name] = (type, alternate_exchange, auto_delete)
        arguments: FieldTable | None = (
            {"alternate-exchange": alternate_exchange} if alternate_exchange else None
        )

        async def declare(channel: aio_pika.abc.AbstractChannel) -> None:
            await channel.declare_exchange(
                name,
                aio_pika.ExchangeType(type),
                durable=True,
                auto_delete=auto_delete,
                arguments=arguments,
            )

        await self._on_short_channel(f"declaring exchange {name!r}", declare)

    async def declare_bound_queue(self, queue: str, exchange: str, routing_key: str = "#") -> None:
        """Declare a durable queue bound to ``exchange`` (idempotent; on a short-lived channel
        like :meth:`declare_exchange`)."""

        async def declare(channel: aio_pika.abc.AbstractChannel) -> None:
            declared = await channel.declare_queue(queue, durable=True)
            await declared.bind(exchange, routing_key)

        await self._on_short_channel(f"declaring queue {queue!r} bound to {exchange!r}", declare)

    async def _on_short_channel(
        self, what: str, declare: Callable[[aio_pika.abc.AbstractChannel], Awaitable[None]]
    ) -> None:
        """Run ``declare`` on a channel of its own, closed afterwards (bounded), as one setup
        step: tried again after a reconnect, a refusal raised as :class:`TopologyError`."""
        conn = self.connection

        async def step() -> None:
            channel = await conn.channel(publisher_confirms=False)
            try:
                await declare(channel)
            finally:
                if not channel.is_closed:
                    # Bounded: on a dead link the close handshake never completes.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(channel.close(), CLOSE_HANDSHAKE)

        await run_step(conn, what, step, within=self._publish_timeout)

    async def channel_for(
        self,
        endpoint: str,
        *,
        hooks: PublisherHooks | None = None,
        alternate_exchange: str | None = None,
        max_inflight: int = 512,
        max_nacks: int | None = None,
    ) -> EndpointSink:
        """Open ``endpoint``'s sink on its own confirm channel (once; closing it frees the name
        again)."""
        if endpoint in self._endpoints:
            raise ValueError(f"endpoint {endpoint!r} already has a publisher")
        # The one place a RabbitMQ sink is built (the class is chosen once, at start).
        sink_class = self._sink_class if self._sink_class is not None else AmqpSink
        conn = self.connection
        publisher: EndpointSink | None = None

        async def open_sink() -> EndpointSink:
            nonlocal publisher
            publisher = sink_class(
                conn,
                endpoint,
                hooks=hooks,
                alternate_exchange=alternate_exchange,
                max_inflight=max_inflight,
                publish_timeout=self._publish_timeout,
                redeclare=self.redeclare,
                max_nacks=max_nacks,
            )
            await publisher.start()
            return publisher

        async def close_half_open() -> None:
            # A try that failed half way leaves no channel behind for aio-pika to restore.
            if publisher is not None:
                with contextlib.suppress(Exception):
                    await publisher.close(0)

        opened = await run_step(
            conn,
            f"opening the publishing channel of endpoint {endpoint!r}",
            open_sink,
            within=self._publish_timeout,
            cleanup=close_half_open,
        )
        self._endpoints[endpoint] = opened
        return opened

    async def redeclare(self) -> None:
        """Declare every exchange declared so far again (idempotent with the same arguments)."""
        for name, (type_, alternate, auto_delete) in list(self._declared.items()):
            await self.declare_exchange(
                name, type_, alternate_exchange=alternate, auto_delete=auto_delete
            )

    async def close_endpoint(self, endpoint: str, deadline: float = 10.0) -> int:
        """Close one endpoint's publisher; return how many messages were left unconfirmed."""
        publisher = self._endpoints.pop(endpoint, None)
        return 0 if publisher is None else await publisher.close(deadline)

    async def close(self, deadline: float = 10.0) -> int:
        """Wait up to ``deadline`` s for every endpoint's in-flight confirms, then disconnect.

        Returns how many messages were left unconfirmed in total.
        """
        endpoints = list(self._endpoints)
        lefts = await asyncio.gather(*(self.close_endpoint(e, deadline) for e in endpoints))
        conn, self._connection = self._connection, None
        if conn is not None:
            conn.close_callbacks.discard(self._on_close)
            # aio-pika#668: a restore racing the close may raise; the process is leaving.
            # Bounded: on a black-holed link the close handshake never completes.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5.0)
            self._report(False)
        return sum(lefts)

    def _on_close(self, _sender: Any, exc: BaseException | None = None) -> None:
        if exc is not None:
            log.warning("AMQP connection lost: %s", exc)
        self._report(False)
        if len(self._urls) > 1 and self._connection is not None and self._rotation is None:
            self._rotation = asyncio.get_running_loop().create_task(self._rotate_urls())

    async def _rotate_urls(self) -> None:
        """While disconnected: point aio-pika's reconnect loop (an attempt every reconnect
        interval, each reading ``conn.url``) at the next URL, between attempts."""
        conn = self._connection
        try:
            interval = float(getattr(conn, "reconnect_interval", 5.0))
            # Attempts come about 1, 2, 3... intervals after the loss: switch at 0, 1.5, 2.5...
            wait = interval * 1.5
            while conn is not None and not conn.is_closed and not conn.connected.is_set():
                self._url_index = (self._url_index + 1) % len(self._urls)
                setattr(conn, "url", URL(self._urls[self._url_index]))  # noqa: B010
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.connected.wait(), wait)
                wait = interval
        finally:
            self._rotation = None

    def _on_reconnect(self, _sender: Any) -> None:
        log.info("AMQP connection re-established")
        self._report(True)

    def _report(self, connected: bool) -> None:
        if self._on_state is not None:
            try:
                self._on_state(connected)
            except Exception:
                log.exception("on_state callback failed")
