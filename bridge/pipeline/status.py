"""The observer: metrics and ``/status`` from the client's typed events. It takes no control
decision (ending a session on a full buffer is the worker's); it only counts and tells."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.cometd.events import (
    AuthFailed,
    ClientEvent,
    Connected,
    FetchPaused,
    FetchResumed,
    Handshaken,
    MessageSkipped,
    PossibleGap,
    Reconnecting,
    ServerClosed,
    SubscriptionFailed,
)
from bridge.cometd.protocol import limit_label


if TYPE_CHECKING:
    import structlog

    from bridge.metrics import EndpointMetrics
    from bridge.positions import PositionKeeper
    from bridge.settings import Endpoint

__all__ = ["EndpointStatus", "PublisherMetricsHooks", "StatusObserver", "render_status"]

# Each of these means the server no longer holds our session: "auth" (a Salesforce-like
# server removes the session of an expired token) and "max_interval" (unconnected for longer
# than the server keeps a session) included.
_SESSION_LOST_REASONS = frozenset({"buffer_full", "unknown_session", "auth", "max_interval"})


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
    delivery: str | None = None  # "replay", "ack" or "none": what the server supports
    gaps: int = 0
    last_gap: dict[str, Any] | None = None


class PublisherMetricsHooks:
    """Counts the sink's troubles on the endpoint's Prometheus series."""

    def __init__(self, metrics: EndpointMetrics) -> None:
        self._m = metrics

    def on_failure(self, reason: str, count: int) -> None:
        self._m.publish_failures[reason].inc(count)

    def on_unroutable(self, action: str) -> None:
        self._m.unroutable[action].inc()

    def on_redelivered(self, count: int) -> None:
        self._m.duplicates_redelivered.inc(count)


class StatusObserver:
    """Turns one endpoint's client events into its metrics and :class:`EndpointStatus`.

    ``is_up()`` says whether the worker streams (handshaken, subscribed); ``holding_full()``
    whether it is ending the session over a full buffer; ``replay_active()`` whether the
    server replays (then a dropped session loses nothing).
    """

    def __init__(
        self,
        metrics: EndpointMetrics,
        status: EndpointStatus,
        log: structlog.typing.FilteringBoundLogger,
        *,
        is_up: Callable[[], bool],
        holding_full: Callable[[], bool],
        replay_active: Callable[[], bool],
    ) -> None:
        self._m = metrics
        self._s = status
        self._log = log
        self._is_up = is_up
        self._holding_full = holding_full
        self._replay_active = replay_active
        # One entry per event type: what it counts and shows.
        self._table: dict[type[Any], Callable[[Any], None]] = {
            Handshaken: self._handshaken,
            Reconnecting: self._reconnecting,
            Connected: self._connected,
            MessageSkipped: self._skipped,
            FetchPaused: self._paused,
            FetchResumed: self._resumed,
            SubscriptionFailed: self._subscription_failed,
            AuthFailed: self._auth_failed,
            ServerClosed: self._server_closed,
            PossibleGap: self._possible_gap,
        }

    def observe(self, event: ClientEvent) -> None:
        handler = self._table.get(type(event))
        if handler is not None:
            handler(event)

    def _handshaken(self, event: Handshaken) -> None:
        self._m.handshake(True)
        s = self._s
        s.client_id = event.client_id
        s.connection_type = event.connection_type
        s.handshaken_at = time.time()

    def _reconnecting(self, event: Reconnecting) -> None:
        m, s = self._m, self._s
        m.reconnect(event.reason)
        s.reconnects += 1
        s.state = "reconnecting"
        if event.error:
            s.last_error = event.error
        self._log.info("reconnecting", reason=event.reason, delay=round(event.delay, 2))
        if event.reason == "quota":
            limit = limit_label(event.error or "")
            m.auth_limit(limit)
            self._log.error(
                "the server refused the session: a quota/limit is exhausted; backing off",
                limit=limit,
                error=event.error,
                retry_in=round(event.delay, 1),
            )
        self._note_lost_session(event.reason)

    def _connected(self, _event: Connected) -> None:
        if self._is_up():
            self._s.state = "streaming"

    def _skipped(self, event: MessageSkipped) -> None:
        self._m.malformed(event.reason)

    def _paused(self, _event: FetchPaused) -> None:
        self._m.fetch_paused.set(1)
        self._s.state = "paused"

    def _resumed(self, _event: FetchResumed) -> None:
        if not self._holding_full():
            self._m.fetch_paused.set(0)
        if self._is_up():
            self._s.state = "streaming"

    def _subscription_failed(self, event: SubscriptionFailed) -> None:
        self._s.last_error = f"subscription to {event.channel} failed: {event.error}"
        self._log.error("subscription failed", channel=event.channel, error=event.error)

    def _auth_failed(self, event: AuthFailed) -> None:
        self._m.handshake(False)
        self._s.last_error = f"authentication failed: {event.error}"

    def _server_closed(self, event: ServerClosed) -> None:
        self._s.last_error = f"server closed the session: {event.error}"

    def _possible_gap(self, event: PossibleGap) -> None:
        """The client lost events the server cannot send again (a lost response on a server
        without replay, an ack session ended while an ack was held)."""
        self._m.possible_gap(event.reason)
        self._log.warning(
            "events may be lost and the server cannot send them again",
            reason=event.reason,
            error=event.detail,
            delivery=self._s.delivery,
        )

    def _note_lost_session(self, reason: str) -> None:
        """A server without replay forgets what it queued for a session it dropped."""
        if self._replay_active() or reason not in _SESSION_LOST_REASONS:
            return
        gap_reason = "session_expired" if reason == "buffer_full" else "session_lost"
        self._m.possible_gap(gap_reason)
        self._log.warning(
            "the server dropped the session; messages it had queued for it may be lost "
            "(the server offers no replay)",
            reason=gap_reason,
            delivery=self._s.delivery,
        )


def render_status(
    s: EndpointStatus,
    config: Endpoint,
    *,
    now: float,
    up: bool,
    url: str | None,
    buffered: int,
    inflight: int,
    outstanding: int,
    ack_shed: int | None,
    keeper: PositionKeeper | None,
) -> dict[str, Any]:
    """One endpoint's entry in ``/status``."""
    result: dict[str, Any] = {
        "state": s.state,
        "up": up,
        "url": url,
        "connection_type": s.connection_type,
        "client_id_age_seconds": None if s.handshaken_at is None else now - s.handshaken_at,
        "last_message_at": s.last_message_at,
        "pending": buffered + outstanding,
        "buffered": buffered,
        "inflight": inflight,
        "outstanding": outstanding,
        "reconnects": s.reconnects,
        "restarts": s.restarts,
        "last_error": s.last_error,
        "channels": list(config.channels),
        "replay": config.replay,
        "gap_policy": config.gap_policy,
        "delivery": s.delivery,
        "gaps": s.gaps,
        "last_gap": s.last_gap,
    }
    if ack_shed is not None:
        # Left with the server while the buffer was full (re-sent later, not lost).
        result["ack_shed"] = ack_shed
    if keeper is not None:
        ages = keeper.ages(now)
        result["positions"] = {
            channel: {
                "replay_id": p.replay_id,
                "age_seconds": ages.get(channel, 0.0),
                "updated_at": p.updated_at,
                "event_time": p.event_time,
            }
            for channel, p in sorted(keeper.snapshot().items())
        }
        result["positions_unflushed"] = keeper.unflushed
    return result
