"""Every Prometheus metric of the daemon, defined once (names: docs/CONTRACTS.md).

``Metrics(registry)`` registers everything on the registry it is given, so tests can use a
fresh ``CollectorRegistry``; the process and platform collectors (``process_*``,
``python_info``) are registered there too. Hot paths use :meth:`Metrics.endpoint`, whose
children are bound to the endpoint label once; label values are bounded (configured names
and fixed reasons).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bridge import __version__
from bridge.cometd.events import RECONNECT_REASONS as _CLIENT_RECONNECT_REASONS


__all__ = [
    "Metrics",
    "EndpointMetrics",
    "PositionSource",
    "NAMESPACE",
    "RECONNECT_REASONS",
    "PUBLISH_FAILURE_REASONS",
    "LEASE_CHANGE_REASONS",
]

NAMESPACE: Final = "cometd_bridge"

# The client library defines the reasons it reports; the metric pre-creates one series each,
# in a stable order so the exposition does not shuffle between runs.
RECONNECT_REASONS: Final = tuple(sorted(_CLIENT_RECONNECT_REASONS))
# ``unroutable``: a dead letter returned by the broker (no queue bound), published again.
PUBLISH_FAILURE_REASONS: Final = ("nack", "timeout", "connection", "unroutable")
UNROUTABLE_ACTIONS: Final = ("alternate", "logged")
HANDSHAKE_RESULTS: Final = ("success", "failure")
LEASE_CHANGE_REASONS: Final = ("acquired", "released", "lost", "handed_over")

# Receive -> broker confirm: sub-millisecond on a local broker, seconds when it is slow.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

PositionSource = Callable[[], Iterable[tuple[str, str, float]]]
"""Returns (endpoint, channel, unix time of the stored position's message) per position."""


class _PositionAgeCollector(Collector):
    """Computes ``replay_position_age_seconds`` at scrape time from the position store."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.source: PositionSource | None = None
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_replay_position_age_seconds",
            "Age of the stored (broker-confirmed) replay position.",
            labels=["endpoint", "channel"],
        )
        if self.source is not None:
            now = self._clock()
            try:
                positions = list(self.source())
            except Exception:  # a broken source must not take /metrics down with it
                positions = []
            for endpoint, channel, stored_at in positions:
                family.add_metric([endpoint, channel], max(0.0, now - stored_at))
        yield family


class EndpointMetrics:
    """One endpoint's metric children, label bound once; use these on the hot path."""

    def __init__(self, m: Metrics, name: str) -> None:
        self.name = name
        self.up = m.endpoint_up.labels(name)
        self.pending = m.pending_messages.labels(name)
        self.pending_capacity = m.pending_capacity_messages.labels(name)
        self.inflight = m.inflight_messages.labels(name)
        self.fetch_paused = m.fetch_paused.labels(name)
        self.received = m.messages_received.labels(name)
        self.published = m.messages_published.labels(name)
        self.last_message_timestamp = m.last_message_timestamp.labels(name)
        self.publish_latency = m.publish_latency.labels(name)
        self.duplicates_redelivered = m.duplicates_redelivered.labels(name)
        self._m = m
        # Create the fixed-reason series at 0 so rate() and alerts see them from the start.
        self.publish_failures = {
            r: m.publish_failures.labels(name, r) for r in PUBLISH_FAILURE_REASONS
        }
        self.unroutable = {a: m.unroutable.labels(name, a) for a in UNROUTABLE_ACTIONS}
        self.reconnects = {r: m.reconnects.labels(name, r) for r in RECONNECT_REASONS}
        self.handshakes = {r: m.handshakes.labels(name, r) for r in HANDSHAKE_RESULTS}

    def reconnect(self, reason: str) -> None:
        """Count a reconnect; ``reason`` must be one of ``RECONNECT_REASONS``."""
        self.reconnects[reason].inc()

    def publish_failure(self, reason: str) -> None:
        """Count a failed publish attempt (``nack``, ``timeout`` or ``connection``)."""
        self.publish_failures[reason].inc()

    def handshake(self, success: bool) -> None:
        """Count a handshake by result."""
        self.handshakes["success" if success else "failure"].inc()

    def malformed(self, reason: str) -> None:
        """Count a skipped server message (bounded ``reason``, e.g. ``bad_json``, ``oversize``)."""
        self._m.malformed_messages.labels(self.name, reason).inc()

    def dead_lettered(self, reason: str) -> None:
        """Count a message whose dead letter the broker confirmed (bounded ``reason``)."""
        self._m.dead_lettered.labels(self.name, reason).inc()

    def auth_limit(self, limit: str) -> None:
        """Count a quota/limit error from the server (bounded ``limit`` name)."""
        self._m.auth_limit_errors.labels(self.name, limit).inc()

    def replay_gap(self, channel: str) -> None:
        """Count a replay position found older than the server's retention."""
        self._m.replay_gaps.labels(self.name, channel).inc()

    def possible_gap(self, reason: str) -> None:
        """Count a session lost while a server without replay/ack may have forgotten messages."""
        self._m.possible_gaps.labels(self.name, reason).inc()

    def message_received(self, now: float | None = None) -> None:
        """One data message received (counter and last-message time)."""
        self.received.inc()
        self.last_message_timestamp.set(time.time() if now is None else now)


class Metrics:
    """All metrics, registered on ``registry`` (a fresh one per process or per test)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Register every metric on ``registry`` and set ``build_info``."""
        self.registry = registry if registry is not None else CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        e = ["endpoint"]
        # A fresh registry has none of the default registry's collectors: add the process
        # (process_resident_memory_bytes, CPU, open fds) and platform (python_info) series
        # every Prometheus exporter is expected to serve.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

        self.build_info = Info("build", "Build metadata.", namespace=ns, registry=r)
        self.amqp_connected = Gauge(
            "amqp_connected", "1 while the AMQP connection is up.", namespace=ns, registry=r
        )
        self.endpoint_up = Gauge(
            "endpoint_up",
            "1 while the endpoint is handshaken, subscribed and its publisher channel is open.",
            e,
            namespace=ns,
            registry=r,
        )
        self.pending_messages = Gauge(
            "pending_messages",
            "Received from CometD, not yet confirmed by the broker (buffer + in flight).",
            e,
            namespace=ns,
            registry=r,
        )
        self.pending_capacity_messages = Gauge(
            "pending_capacity_messages",
            "Bound of pending_messages (max_pending_count).",
            e,
            namespace=ns,
            registry=r,
        )
        self.inflight_messages = Gauge(
            "inflight_messages", "Published, awaiting broker confirm.", e, namespace=ns, registry=r
        )
        self.fetch_paused = Gauge(
            "fetch_paused",
            "1 while fetching is stopped because the buffer is full.",
            e,
            namespace=ns,
            registry=r,
        )
        self.messages_received = Counter(
            "messages_received", "CometD data messages received.", e, namespace=ns, registry=r
        )
        self.messages_published = Counter(
            "messages_published", "Messages confirmed by the broker.", e, namespace=ns, registry=r
        )
        self.publish_failures = Counter(
            "publish_failures",
            "Failed publish attempts (each is retried).",
            ["endpoint", "reason"],
            namespace=ns,
            registry=r,
        )
        self.unroutable = Counter(
            "unroutable",
            "Messages returned by the broker as unroutable.",
            ["endpoint", "action"],
            namespace=ns,
            registry=r,
        )
        self.malformed_messages = Counter(
            "malformed_messages",
            "Server messages skipped (bad JSON, not Bayeux, oversize).",
            ["endpoint", "reason"],
            namespace=ns,
            registry=r,
        )
        self.dead_lettered = Counter(
            "dead_lettered",
            "Messages not publishable to their exchange, confirmed on the dead-letter exchange.",
            ["endpoint", "reason"],
            namespace=ns,
            registry=r,
        )
        self.reconnects = Counter(
            "reconnects",
            "Client reconnects/re-handshakes by reason.",
            ["endpoint", "reason"],
            namespace=ns,
            registry=r,
        )
        self.handshakes = Counter(
            "handshakes", "Handshakes by result.", ["endpoint", "result"], namespace=ns, registry=r
        )
        self.last_message_timestamp = Gauge(
            "last_message_timestamp_seconds",
            "Unix time of the last received data message.",
            e,
            namespace=ns,
            registry=r,
        )
        self.publish_latency = Histogram(
            "publish_latency_seconds",
            "Receive to broker confirm.",
            e,
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.token_refreshes = Counter(
            "token_refreshes",
            "OAuth token requests by result.",
            ["credential", "result"],
            namespace=ns,
            registry=r,
        )
        self.token_expiry_timestamp = Gauge(
            "token_expiry_timestamp_seconds",
            "Unix time the current token expires.",
            ["credential"],
            namespace=ns,
            registry=r,
        )
        self.auth_limit_errors = Counter(
            "auth_limit_errors",
            "Quota/limit errors from the server.",
            ["endpoint", "limit"],
            namespace=ns,
            registry=r,
        )
        self.replay_gaps = Counter(
            "replay_gaps",
            "Replay positions found older than the server's retention.",
            ["endpoint", "channel"],
            namespace=ns,
            registry=r,
        )
        self.possible_gaps = Counter(
            "possible_gaps",
            "Sessions lost while a server without replay/ack may have forgotten messages.",
            ["endpoint", "reason"],
            namespace=ns,
            registry=r,
        )
        self.duplicates_redelivered = Counter(
            "duplicates_redelivered",
            "Messages published again after a lost confirm or replay.",
            e,
            namespace=ns,
            registry=r,
        )
        # BRIDGE_COORDINATION=rabbitmq: which replica streams which endpoint.
        self.endpoint_active = Gauge(
            "endpoint_active",
            "1 while this replica holds the endpoint's lease and streams it.",
            e,
            namespace=ns,
            registry=r,
        )
        self.lease_changes = Counter(
            "lease_changes",
            "Lease changes of this replica: acquired, released, lost, handed_over.",
            ["endpoint", "reason"],
            namespace=ns,
            registry=r,
        )
        self._positions = _PositionAgeCollector(clock)
        r.register(self._positions)

        self.build_info.info(
            {"version": version or __version__, "python": platform.python_version()}
        )

        self._endpoints: dict[str, EndpointMetrics] = {}

    def endpoint(self, name: str) -> EndpointMetrics:
        """The (cached) bound children for endpoint ``name``."""
        em = self._endpoints.get(name)
        if em is None:
            em = self._endpoints[name] = EndpointMetrics(self, name)
        return em

    def set_position_source(self, source: PositionSource | None) -> None:
        """Where ``replay_position_age_seconds`` reads positions at scrape time."""
        self._positions.source = source
