"""Replay gaps: a stored position older than the server's retention, and what to do about it.

The wire side (recognising the server's invalid-replay-id refusal) is
:func:`bridge.cometd.ext.replay.invalid_replay_id`; everything the daemon decides lives here:
the endpoint's ``replay``/``gap_policy`` settings, the :class:`GapHandler` that counts, logs,
publishes and applies the policy, and the gap record sent through a
:class:`~bridge.pipeline.sink.Sink` to the control exchange.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bridge.cometd.exceptions import ServerError
from bridge.cometd.ext.replay import REPLAY_ALL, REPLAY_NEW, InvalidReplayId, invalid_replay_id
from bridge.pipeline.sink import PublishResult, Sink


if TYPE_CHECKING:
    import structlog

    from bridge.metrics import EndpointMetrics
    from bridge.pipeline.status import EndpointStatus
    from bridge.positions import PositionKeeper
    from bridge.settings import Endpoint

__all__ = [
    "GapHandler",
    "GapPolicy",
    "GapRecords",
    "GapSink",
    "ReplayGapError",
    "gap_record",
    "gap_start",
    "initial_start",
]

GapSink = Callable[[str, Mapping[str, Any]], Awaitable[None]]
"""``sink(endpoint, record)`` publishes a gap record to the control exchange (raises on failure)."""


class GapPolicy(StrEnum):
    """What to do when a stored position is older than the server's retention.

    ``fail`` stops the endpoint (an operator decides); ``latest`` resumes with new events
    (the gap stays lost); ``earliest`` replays everything still retained (loses only what
    the server already forgot; duplicates possible).
    """

    FAIL = "fail"
    LATEST = "latest"
    EARLIEST = "earliest"


class ReplayGapError(Exception):
    """The gap policy is ``fail`` and a channel's position is past the retention window."""

    def __init__(self, endpoint: str, gap: InvalidReplayId) -> None:
        self.endpoint = endpoint
        self.gap = gap
        super().__init__(
            f"endpoint {endpoint!r} channel {gap.channel!r}: stored replay id {gap.replay_id} is "
            f"older than the server's retention ({gap.error}); gap_policy=fail. Choose a start "
            "with `cometd-bridge positions set` or change gap_policy."
        )


def gap_start(policy: GapPolicy | str, endpoint: str, gap: InvalidReplayId) -> int:
    """The replay id to resubscribe with under ``policy``; raises ReplayGapError for ``fail``."""
    policy = GapPolicy(policy)
    if policy is GapPolicy.FAIL:
        raise ReplayGapError(endpoint, gap)
    return REPLAY_NEW if policy is GapPolicy.LATEST else REPLAY_ALL


def gap_record(
    endpoint: str, gap: InvalidReplayId, policy: GapPolicy | str, now: float
) -> dict[str, Any]:
    """The JSON body of the gap record published to the control exchange."""
    policy = GapPolicy(policy)
    resumed = {GapPolicy.FAIL: None, GapPolicy.LATEST: REPLAY_NEW, GapPolicy.EARLIEST: REPLAY_ALL}
    return {
        "type": "replay_gap",
        "endpoint": endpoint,
        "channel": gap.channel,
        "replay_id": gap.replay_id,
        "error": gap.error,
        "policy": policy.value,
        "resumed_from": resumed[policy],
        "time": now,
    }


def initial_start(replay: str, fallback: str = "new") -> int | None:
    """Map the endpoint settings to a start id: None when replay is ``off``.

    ``replay``: ``off``, ``new`` (or ``-1``), ``all`` (or ``-2``), ``stored`` (resume from the
    stored position; ``fallback`` ``new``/``all`` when there is none).
    """
    named = {"new": REPLAY_NEW, "-1": REPLAY_NEW, "all": REPLAY_ALL, "-2": REPLAY_ALL}
    if replay == "off":
        return None
    if replay == "stored":
        if fallback not in ("new", "all"):
            raise ValueError(f"invalid replay_fallback {fallback!r}")
        return named[fallback]
    try:
        return named[replay]
    except KeyError:
        raise ValueError(f"invalid replay setting {replay!r}") from None


# -- the gap record on the control exchange ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class GapRecordMessage:
    """A gap record as a sink message (the fields :class:`~bridge.pipeline.sink.Sink` needs)."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str
    timestamp: float


class GapRecords:
    """Publishes gap records to ``exchange`` (routing key ``replay_gap.<endpoint>``) through
    ``sink`` and waits up to ``timeout`` seconds for the broker's confirm."""

    def __init__(self, sink: Sink, exchange: str, timeout: float) -> None:
        self.sink = sink
        self._exchange = exchange
        self._timeout = timeout

    async def publish(self, endpoint: str, record: Mapping[str, Any]) -> None:
        message = GapRecordMessage(
            exchange=self._exchange,
            routing_key=f"replay_gap.{endpoint}",
            body=json.dumps(record, separators=(",", ":")).encode(),
            headers={"cometd-endpoint": endpoint, "type": str(record.get("type"))},
            message_id=f"{endpoint}:gap:{record.get('channel')}:{record.get('time')}",
            timestamp=time.time(),
        )
        settled: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()

        def done(_message: GapRecordMessage, outcome: PublishResult) -> None:
            if not settled.done():
                settled.set_result(outcome)

        self.sink.submit(message, done)
        async with asyncio.timeout(self._timeout):
            outcome = await settled
        # RETURNED: the broker took it and no queue wanted it (the sink logs that).
        if outcome is PublishResult.UNPUBLISHABLE:
            raise RuntimeError("gap record unpublishable")


# -- detection and policy ---------------------------------------------------------------------


class GapHandler:
    """One endpoint's gaps: recognised in a refused subscribe, counted, logged, published, and
    then the ``gap_policy`` applied (the channel's position reset, its start set)."""

    def __init__(
        self,
        endpoint: str,
        config: Endpoint,
        *,
        set_start: Callable[[str, int], None],
        metrics: EndpointMetrics,
        status: EndpointStatus,
        log: structlog.typing.FilteringBoundLogger,
        keeper: PositionKeeper | None,
        sink: GapSink | None,
        describe: Callable[[BaseException], str],
    ) -> None:
        self._endpoint = endpoint
        self._config = config
        self._set_start = set_start
        self._metrics = metrics
        self._status = status
        self._log = log
        self._keeper = keeper
        self._sink = sink
        self._describe = describe

    def gap_of(self, exc: ServerError, channel: str | None) -> InvalidReplayId | None:
        """The gap ``exc`` reports for the subscribe to ``channel``, or None."""
        gap = invalid_replay_id(exc.response)
        ours = {c.split("?", 1)[0] for c in self._config.channels}
        if gap is not None and gap.channel not in ours and channel:
            # The channel we subscribed to, never one the server named: it becomes a stored
            # position and a metric label.
            gap = dataclasses.replace(gap, channel=channel.split("?", 1)[0])
        return gap

    async def handle(self, gap: InvalidReplayId) -> None:
        """Count, log and publish the gap, then apply the gap policy (``fail`` raises
        :class:`ReplayGapError`)."""
        policy = self._config.gap_policy
        self._metrics.replay_gap(gap.channel)
        record = gap_record(self._endpoint, gap, policy, time.time())
        self._status.gaps += 1
        self._status.last_gap = record
        self._log.error(
            "replay position is older than the server's retention: events after it are lost",
            channel=gap.channel,
            replay_id=gap.replay_id,
            gap_policy=policy,
            server_error=gap.error,
        )
        if self._sink is not None:
            try:
                await self._sink(self._endpoint, record)
            except Exception as exc:  # the metric and the log still tell; never hide the policy
                self._log.error("gap record could not be published", error=self._describe(exc))
        start = gap_start(policy, self._endpoint, gap)
        if self._keeper is not None:
            self._keeper.reset(gap.channel, None)
        self._set_start(gap.channel, start)
