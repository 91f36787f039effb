"""One endpoint: a CometD client's messages, routed and published with broker confirms.

The pipeline is ``Client.receive_many`` → :class:`~bridge.routing.Router` → the endpoint's
:class:`~bridge.amqp.EndpointPublisher`. Many publishes are in flight at once; the window
(``max_inflight``) bounds them, and while it is full nothing more is taken from the client,
so the client's own bounded buffer fills and it stops fetching: back-pressure reaches the
CometD server without dropping anything.

A message counts as delivered only when the broker confirmed it. A client session that ends
(server gone, session closed, ``connection_timeout``) is re-opened by :meth:`run` with
jittered backoff; messages already handed to the publisher stay there and are confirmed (or
re-published) whatever happens to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.amqp import EndpointPublisher, PublishResult
from bridge.cometd import Client, ConnectionType
from bridge.cometd.events import (
    AuthFailed,
    ClientEvent,
    Connected,
    FetchPaused,
    FetchResumed,
    Handshaken,
    MessageSkipped,
    Reconnecting,
    ServerClosed,
    SubscriptionFailed,
)
from bridge.cometd.exceptions import ClientInvalidOperation, CometdError
from bridge.cometd.extensions import AuthExtension, Extension
from bridge.metrics import EndpointMetrics
from bridge.routing import RoutedMessage, Router, RoutingError
from bridge.settings import Endpoint


__all__ = ["EndpointWorker", "EndpointStatus", "PublisherMetricsHooks"]

log = structlog.get_logger("bridge.endpoint")

# Restart backoff after a failed session: doubles from FIRST up to MAX, full jitter; a session
# that stayed up for RESET_AFTER seconds starts the next failure from FIRST again.
_RESTART_FIRST = 0.5
_RESTART_MAX = 30.0
_RESTART_RESET_AFTER = 60.0


class PublisherMetricsHooks:
    """Counts the publisher's troubles on the endpoint's Prometheus series."""

    def __init__(self, metrics: EndpointMetrics) -> None:
        self._m = metrics

    def on_failure(self, reason: str, count: int) -> None:
        self._m.publish_failures[reason].inc(count)

    def on_unroutable(self, action: str) -> None:
        self._m.unroutable[action].inc()

    def on_redelivered(self, count: int) -> None:
        self._m.duplicates_redelivered.inc(count)


@dataclass
class EndpointStatus:
    """What ``/status`` shows for one endpoint."""

    state: str = "starting"
    connection_type: str | None = None
    client_id: str | None = None
    handshaken_at: float | None = None
    last_message_at: float | None = None
    reconnects: int = 0
    restarts: int = 0
    last_error: str | None = None
    subscribed: list[str] = field(default_factory=list)


ClientFactory = Callable[..., Client]


class EndpointWorker:
    """Runs one endpoint until :meth:`stop`: client → router → publisher, restarted on failure."""

    def __init__(
        self,
        name: str,
        config: Endpoint,
        *,
        publisher: EndpointPublisher,
        metrics: EndpointMetrics,
        auth: AuthExtension | None = None,
        extensions: Sequence[Extension] = (),
        url: str | None = None,
        client_factory: ClientFactory = Client,
    ) -> None:
        self.name = name
        self.config = config
        self.url = url if url is not None else config.resolve_url()
        self.status = EndpointStatus()
        self._publisher = publisher
        self._metrics = metrics
        self._auth = auth
        self._extensions = list(extensions)
        self._client_factory = client_factory
        self._router = Router.from_settings(name, config)
        self._client: Client | None = None
        self._outstanding = 0  # handed to the publisher, not yet settled
        self.received_total = 0  # data messages taken from the client and handed on
        self.confirmed_total = 0  # settled by the broker (confirmed or returned)
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = asyncio.Event()
        self._up = False
        self._log = log.bind(endpoint=name)
        metrics.pending_capacity.set(config.max_pending_count)

    # -- state for /readyz, /status and the gauges -------------------------------------------

    @property
    def up(self) -> bool:
        """Handshaken, subscribed, and the publisher channel is open."""
        return self._up and self._publisher.ready

    @property
    def outstanding(self) -> int:
        """Messages handed to the publisher and not yet settled by the broker."""
        return self._outstanding

    @property
    def buffered(self) -> int:
        """Messages in the client's buffer, not yet taken for publishing."""
        client = self._client
        return client.pending_count if client is not None else 0

    def refresh_gauges(self) -> None:
        """Set the level gauges (called periodically, not per message)."""
        m = self._metrics
        m.up.set(1 if self.up else 0)
        m.pending.set(self.buffered + self._outstanding)
        m.inflight.set(self._publisher.inflight)

    def status_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        s = self.status
        return {
            "state": s.state,
            "up": self.up,
            "url": self.url,
            "connection_type": s.connection_type,
            "client_id_age_seconds": None if s.handshaken_at is None else now - s.handshaken_at,
            "last_message_at": s.last_message_at,
            "pending": self.buffered + self._outstanding,
            "buffered": self.buffered,
            "inflight": self._publisher.inflight,
            "outstanding": self._outstanding,
            "reconnects": s.reconnects,
            "restarts": s.restarts,
            "last_error": s.last_error,
            "channels": list(self.config.channels),
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a session open and stream it until :meth:`stop`; never raises for a failure."""
        structlog.contextvars.bind_contextvars(endpoint=self.name)
        attempt = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure of one session is retried, never fatal
                self.status.last_error = _describe(exc)
                self._log.warning("endpoint session ended", error=self.status.last_error)
            finally:
                self._set_up(False)
            if self._stopping.is_set():
                break
            if time.monotonic() - started > _RESTART_RESET_AFTER:
                attempt = 0
            delay = random.uniform(0, min(_RESTART_MAX, _RESTART_FIRST * 2**attempt))
            attempt += 1
            self.status.restarts += 1
            self.status.state = "restarting"
            self._log.info("restarting endpoint session", delay=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
        self.status.state = "stopped"

    def request_stop(self) -> None:
        """Stop fetching; :meth:`run` drains what was received and returns."""
        self._stopping.set()

    async def wait_settled(self) -> None:
        """Return once every message handed to the publisher is settled."""
        await self._publisher.wait_idle()

    # -- one client session ------------------------------------------------------------------

    async def _session(self) -> None:
        self.status.state = "connecting"
        client = self._client_factory(
            self.url,
            [ConnectionType(t) for t in self.config.connection_types],
            connection_timeout=self.config.connection_timeout,
            max_pending_count=self.config.max_pending_count,
            extensions=self._extensions,
            auth=self._auth,
            headers=dict(self.config.headers),
            listener=self._on_client_event,
        )
        self._client = client
        try:
            await client.open()
            for channel in self.config.channels:
                await client.subscribe(channel)
            self.status.subscribed = sorted(client.subscriptions)
            self.status.state = "streaming"
            self._set_up(True)
            self._log.info(
                "endpoint streaming",
                connection_type=str(client.connection_type),
                channels=self.status.subscribed,
            )
            await self._pump(client)
        finally:
            self._set_up(False)
            # Close politely, then publish whatever the client had already received: a
            # closed client still hands out its buffer, so nothing fetched is left behind.
            with contextlib.suppress(Exception):
                await client.close()
            await self._drain_buffer(client)
            self._client = None

    async def _pump(self, client: Client) -> None:
        stopping = self._stopping
        stop_wait = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                room = self.config.max_inflight - self._outstanding
                if room <= 0:
                    self._room.clear()
                    room_wait = asyncio.ensure_future(self._room.wait())
                    await asyncio.wait({room_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    room_wait.cancel()
                    continue
                receive = asyncio.ensure_future(client.receive_many(room))
                await asyncio.wait({receive, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    with contextlib.suppress(asyncio.CancelledError, CometdError):
                        await receive
                    break
                self._submit(receive.result())
        finally:
            stop_wait.cancel()

    async def _drain_buffer(self, client: Client) -> None:
        while client.pending_count:
            try:
                self._submit(await client.receive_many(max(1, client.pending_count)))
            except (ClientInvalidOperation, CometdError):
                break

    def _submit(self, messages: list[dict[str, Any]]) -> None:
        now = time.time()
        route = self._router.route
        submit = self._publisher.submit
        done = self._on_settled
        routed = 0
        for message in messages:
            try:
                msg = route(message, now)
            except RoutingError as exc:
                # Not silently dropped: counted and logged with what identifies it.
                self._metrics.malformed("unroutable_message")
                self._log.error(
                    "server message cannot be routed; skipped",
                    error=str(exc),
                    channel=message.get("channel") if isinstance(message, dict) else None,
                    message=repr(message)[:500],
                )
                continue
            submit(msg, done)
            routed += 1
        if routed:
            self._outstanding += routed
            self.received_total += routed
            self._metrics.received.inc(routed)
            self._metrics.last_message_timestamp.set(now)
            self.status.last_message_at = now

    def _on_settled(self, msg: RoutedMessage, result: PublishResult) -> None:
        self._outstanding -= 1
        self.confirmed_total += 1
        if result is PublishResult.CONFIRMED or result is PublishResult.ALTERNATE:
            self._metrics.published.inc()
        self._metrics.publish_latency.observe(time.time() - msg.timestamp)
        if self._outstanding < self.config.max_inflight:
            self._room.set()

    # -- client events → status and metrics --------------------------------------------------

    def _on_client_event(self, event: ClientEvent) -> None:
        m, s = self._metrics, self.status
        if isinstance(event, Handshaken):
            m.handshake(True)
            s.client_id = event.client_id
            s.connection_type = event.connection_type
            s.handshaken_at = time.time()
        elif isinstance(event, Reconnecting):
            m.reconnect(event.reason)
            s.reconnects += 1
            s.state = "reconnecting"
            if event.error:
                s.last_error = event.error
            self._log.info("reconnecting", reason=event.reason, delay=round(event.delay, 2))
        elif isinstance(event, Connected):
            if self._up:
                s.state = "streaming"
        elif isinstance(event, MessageSkipped):
            m.malformed(event.reason)
        elif isinstance(event, FetchPaused):
            m.fetch_paused.set(1)
            s.state = "paused"
        elif isinstance(event, FetchResumed):
            m.fetch_paused.set(0)
            if self._up:
                s.state = "streaming"
        elif isinstance(event, SubscriptionFailed):
            s.last_error = f"subscription to {event.channel} failed: {event.error}"
            self._log.error("subscription failed", channel=event.channel, error=event.error)
        elif isinstance(event, AuthFailed):
            m.handshake(False)
            s.last_error = f"authentication failed: {event.error}"
        elif isinstance(event, ServerClosed):
            s.last_error = f"server closed the session: {event.error}"

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.up.set(1 if self.up else 0)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
