"""Settlement: the only code that turns a sink's confirm into positions advanced and acks
released.

:meth:`Settlement.hand_over` routes a batch from the source and submits each message to the
sink, entering its replay id into the endpoint's :class:`~bridge.positions.PositionKeeper`;
the sink's ``done`` callback then confirms the position and hands the message's ack tag back to
the source. A message that can never be published is skipped: counted, logged, and settled at
once (position and ack), so neither sticks behind it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from bridge.cometd.ext import event_time_of
from bridge.pipeline.sink import PublishResult, Sink
from bridge.pipeline.source import Source
from bridge.routing import RoutedMessage, Router, replay_id_of
from bridge.summary import summarize


if TYPE_CHECKING:
    import structlog

    from bridge.metrics import EndpointMetrics
    from bridge.pipeline.status import EndpointStatus
    from bridge.positions import PositionKeeper

__all__ = ["Settlement", "error_text"]


class Settlement:
    """One endpoint's messages between the source and the sink, and their settlement.

    ``outstanding`` counts messages handed to the sink and not yet settled; :attr:`room` is set
    while it is below ``max_inflight`` (the pump waits on it).
    """

    def __init__(
        self,
        *,
        router: Router,
        sink: Sink,
        source: Source,
        keeper: PositionKeeper | None,
        track_acks: bool,
        metrics: EndpointMetrics,
        status: EndpointStatus,
        log: structlog.typing.FilteringBoundLogger,
        max_inflight: int,
    ) -> None:
        self._router = router
        self._sink = sink
        self._source = source
        self._keeper = keeper
        self._track_acks = track_acks
        self._metrics = metrics
        self._status = status
        self._log = log
        self._max_inflight = max_inflight
        self.outstanding = 0  # handed to the sink, not yet settled
        self.received_total = 0  # data messages taken from the source and handed on
        self.confirmed_total = 0  # settled by the sink (confirmed or returned)
        self.room = asyncio.Event()
        self.room.set()

    def hand_over(self, messages: list[dict[str, Any]]) -> None:
        """Route ``messages`` and submit them to the sink; raises ``RuntimeError`` when the
        sink is closed (the session ends, nothing skipped)."""
        now = time.time()
        route = self._router.route
        submit = self._sink.submit
        keeper = self._keeper
        ack_tag_of = self._source.ack_tag_of if self._track_acks else None
        tracked = keeper is not None or ack_tag_of is not None
        done = self._on_settled_tracked if tracked else self._on_settled
        routed = 0
        repeats = 0
        for message in messages:
            # Each message on its own: whatever one of them does, the rest of the batch goes on.
            try:
                # The ack tag and the event's own time ride in the routed message to its confirm.
                msg = route(
                    message,
                    now,
                    ack_tag=None if ack_tag_of is None else ack_tag_of(message),
                    event_time=None if keeper is None else event_time_of(message),
                )
            except Exception as exc:  # RoutingError, or input the router did not foresee
                self._skip(message, "unroutable_message", exc)
                continue
            try:
                submit(msg, done)
            except RecursionError as exc:
                self._skip(message, "unpublishable", exc)
                continue
            except RuntimeError:  # the sink is closed: the session ends, nothing skipped
                raise
            except Exception as exc:  # can never be encoded (e.g. routing key > 255 bytes)
                self._skip(message, "unpublishable", exc)
                continue
            routed += 1
            replay_id = msg.replay_id
            if keeper is not None and isinstance(replay_id, int):
                position = keeper.position(msg.channel)
                if position is not None and replay_id <= position:
                    repeats += 1  # already confirmed once: a replay after a reconnect
                keeper.received(msg.channel, replay_id)
        if routed:
            self.outstanding += routed
            self.received_total += routed
            self._metrics.received.inc(routed)
            self._metrics.last_message_timestamp.set(now)
            self._status.last_message_at = now
        if repeats:
            self._metrics.duplicates_redelivered.inc(repeats)

    def _skip(self, message: Any, reason: str, error: BaseException) -> None:
        # Not silently dropped: counted and logged with what identifies it (a bounded summary:
        # the message may be nested past the recursion limit or megabytes long); acknowledged
        # so the ack never sticks behind a message that can never be published.
        self._metrics.malformed(reason)
        channel = message.get("channel") if isinstance(message, dict) else None
        self._log.error(
            "server message cannot be published; skipped",
            reason=reason,
            error=error_text(error),
            channel=summarize(channel, limit=200) if channel is not None else None,
            message=summarize(message),
        )
        if not isinstance(message, dict):
            return
        if self._track_acks:
            self._source.confirm(self._source.ack_tag_of(message))
        # A replay position moves over a skipped event once everything received before it is
        # confirmed, so a poison event is not replayed first on every new session.
        replay_id = replay_id_of(message.get("data"))
        if self._keeper is not None and isinstance(channel, str) and isinstance(replay_id, int):
            self._keeper.received(channel, replay_id)
            self._keeper.confirmed(channel, replay_id)

    def _on_settled(self, msg: RoutedMessage, result: PublishResult) -> None:
        self.outstanding -= 1
        self.confirmed_total += 1
        if result is PublishResult.CONFIRMED or result is PublishResult.ALTERNATE:
            self._metrics.published.inc()
        elif result is PublishResult.UNPUBLISHABLE:  # logged by the sink
            self._metrics.malformed("unpublishable")
        self._metrics.publish_latency.observe(time.time() - msg.timestamp)
        if self.outstanding < self._max_inflight:
            self.room.set()

    def _on_settled_tracked(self, msg: RoutedMessage, result: PublishResult) -> None:
        self._on_settled(msg, result)
        replay_id = msg.replay_id
        if self._keeper is not None and isinstance(replay_id, int):
            self._keeper.confirmed(msg.channel, replay_id, msg.event_time)
        if self._track_acks:
            self._source.confirm(msg.ack_tag)


def error_text(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` cut to ``limit`` characters, for a skip log line."""
    if isinstance(exc, RecursionError):
        return "RecursionError: nested too deeply"
    try:
        text = describe(exc)
    except Exception:  # an exception whose str() fails: its type still says something
        text = type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def describe(exc: BaseException) -> str:
    """``Type: message`` (or the type alone when the message is empty)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
