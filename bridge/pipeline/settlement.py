"""Settlement: the only code that turns a sink's confirm into positions advanced and acks
released.

:meth:`Settlement.hand_over` routes a batch from the source and submits each message to the
sink, entering its replay id into the endpoint's :class:`~bridge.positions.PositionKeeper`;
the sink's ``done`` callback then confirms the position and hands the message's ack tag back to
the source. A message that can never be published (unroutable, unencodable, or nacked by the
broker ``max_nacks`` times) is counted and logged and, with a dead-letter exchange configured,
published there (:mod:`bridge.pipeline.dead_letters`): it is settled (position and ack) by the
dead letter's confirm, so the position never moves over a message that is nowhere. Without a
dead-letter exchange it is skipped and settled at once, so neither sticks behind it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from bridge.cometd.ext import event_time_of
from bridge.pipeline.dead_letters import DeadLetter, dead_letter
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
        endpoint: str = "",
        dead_letter_exchange: str | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._dead_letter_exchange = dead_letter_exchange
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
        # the message may be nested past the recursion limit or megabytes long), dead-lettered
        # when the endpoint has a dead-letter exchange, else acknowledged at once so the ack
        # never sticks behind a message that can never be published.
        self._metrics.malformed(reason)
        channel = message.get("channel") if isinstance(message, dict) else None
        dead_lettered = self._dead_letter_exchange is not None
        self._log.error(
            "server message cannot be published; "
            + ("dead-lettered" if dead_lettered else "skipped"),
            reason=reason,
            error=error_text(error),
            channel=summarize(channel, limit=200) if channel is not None else None,
            message=summarize(message),
        )
        if dead_lettered and self._dead_letter_skipped(
            message, channel, reason, error_text(error, limit=2000), acked=self._track_acks
        ):
            return
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

    def dead_letter_refused(self, reason: str, detail: str, message: Any) -> None:
        """Dead-letter a message the CometD client refused once decoded (too deep, not Bayeux,
        over the size cap); counted by the status observer. Without a dead-letter exchange,
        or when the sink is closed, it stays skipped as before.

        Its replay position is not held for the dead letter: the client refuses it while
        decoding, before the messages received ahead of it reach the keeper, and the keeper
        must see a channel's messages in arrival order (else the watermark could pass them)."""
        if self._dead_letter_exchange is None:
            return
        channel = message.get("channel") if isinstance(message, dict) else None
        try:
            # Never acknowledged: the client refused it before the ack extension saw it.
            self._dead_letter_skipped(
                message, channel, reason, detail, acked=False, positioned=False
            )
        except RuntimeError:  # the sink is closed: the session is ending
            self._log.warning("sink closed; a refused message is not dead-lettered", reason=reason)

    def _dead_letter_skipped(
        self,
        message: Any,
        channel: Any,
        reason: str,
        error: str,
        *,
        acked: bool,
        positioned: bool = True,
    ) -> bool:
        """Submit the dead letter of a message the client, routing or the sink refused; False
        when even that cannot be submitted (then it is skipped as without a dead-letter
        exchange)."""
        assert self._dead_letter_exchange is not None
        is_dict = isinstance(message, dict)
        replay_id = replay_id_of(message.get("data")) if is_dict and positioned else None
        ack_tag = self._source.ack_tag_of(message) if is_dict and acked else None
        event_time = event_time_of(message) if is_dict and self._keeper is not None else None
        try:
            letter = dead_letter(
                exchange=self._dead_letter_exchange,
                endpoint=self._endpoint,
                reason=reason,
                error=error,
                channel=channel,
                replay_id=replay_id,
                now=time.time(),
                message=message,
                ack_tag=ack_tag,
                event_time=event_time,
            )
            self._sink.submit(letter, self._on_dead_lettered)
        except RuntimeError:  # the sink is closed: the session ends, nothing settled
            raise
        except Exception as exc:
            self._log.error("dead letter cannot be published", error=error_text(exc))
            return False
        # The position waits for the dead letter's confirm, like any handed-over message's.
        if self._keeper is not None and isinstance(channel, str) and isinstance(replay_id, int):
            self._keeper.received(channel, replay_id)
        self.outstanding += 1
        self.received_total += 1
        if self.outstanding >= self._max_inflight:
            self.room.clear()
        return True

    def _dead_letter_routed(self, msg: RoutedMessage, reason: str, error: str) -> None:
        """Submit the dead letter of a routed message the sink gave back. When even that cannot
        be submitted (the sink is closing), the message is left unsettled: its position does
        not move and the source sends it again in a later session."""
        assert self._dead_letter_exchange is not None
        try:
            letter = dead_letter(
                exchange=self._dead_letter_exchange,
                endpoint=self._endpoint,
                reason=reason,
                error=error,
                channel=msg.channel,
                replay_id=msg.replay_id,
                now=time.time(),
                body=msg.body,
                message_id=msg.message_id,
                ack_tag=msg.ack_tag,
                event_time=msg.event_time,
            )
            self._sink.submit(letter, self._on_dead_lettered)
        except Exception as exc:
            self._log.error(
                "dead letter cannot be published; the message stays unconfirmed",
                reason=reason,
                channel=msg.channel,
                replay_id=msg.replay_id,
                error=error_text(exc),
            )
            self.outstanding -= 1
            if self.outstanding < self._max_inflight:
                self.room.set()

    def _on_dead_lettered(self, letter: DeadLetter, result: PublishResult) -> None:
        # A dead letter is retried until the broker confirms it (never returned or refused),
        # so anything else is a dead letter that cannot even be encoded: logged, and settled
        # all the same so the endpoint does not stall behind it.
        if result is PublishResult.CONFIRMED:
            self._metrics.dead_lettered(letter.reason)
        else:
            self._log.error(
                "dead letter not confirmed; message dropped",
                reason=letter.reason,
                result=result.value,
                channel=letter.channel,
                replay_id=letter.replay_id,
            )
        self.outstanding -= 1
        self.confirmed_total += 1
        if self.outstanding < self._max_inflight:
            self.room.set()
        replay_id = letter.replay_id
        channel = letter.channel
        if self._keeper is not None and channel is not None and isinstance(replay_id, int):
            self._keeper.confirmed(channel, replay_id, letter.event_time)
        if self._track_acks and letter.ack_tag is not None:
            self._source.confirm(letter.ack_tag)

    def _diverted(self, msg: RoutedMessage, result: PublishResult) -> bool:
        """A routed message the sink could not publish goes to the dead-letter exchange; its
        settlement then waits for the dead letter's confirm. True when it was taken over."""
        if self._dead_letter_exchange is None:
            return False
        if result is PublishResult.UNPUBLISHABLE:  # logged by the sink
            self._metrics.malformed("unpublishable")
            self._dead_letter_routed(
                msg, "unpublishable", "the message could not be encoded as AMQP frames"
            )
            return True
        if result is PublishResult.REFUSED:  # logged by the sink
            self._dead_letter_routed(
                msg, "nacked", "nacked by the broker on every attempt (max_nacks)"
            )
            return True
        return False

    def _on_settled(self, msg: RoutedMessage, result: PublishResult) -> None:
        if (
            result is PublishResult.UNPUBLISHABLE or result is PublishResult.REFUSED
        ) and self._diverted(msg, result):
            return
        self._settle(msg, result)

    def _settle(self, msg: RoutedMessage, result: PublishResult) -> None:
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
        if (
            result is PublishResult.UNPUBLISHABLE or result is PublishResult.REFUSED
        ) and self._diverted(msg, result):
            return
        self._settle(msg, result)
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
