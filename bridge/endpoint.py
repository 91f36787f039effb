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

No loss across sessions and restarts (replay servers): each message's replay id enters the
endpoint's :class:`~bridge.positions.PositionKeeper` when it is handed to the publisher and is
confirmed there when the broker settled it, so the stored position never passes an unconfirmed
message; every (re)subscription replays from it. The ack extension, where the server has it,
acknowledges only broker-confirmed batches. Back-pressure, by server kind:

- replay: a buffer full for longer than ``_PAUSE_GRACE`` ends the session on purpose
  (reconnect reason ``buffer_full``); once the publisher is idle a new session replays from the
  stored position, so the server, not the bridge, holds the backlog;
- ack: the ack stays held, so the server keeps the unconfirmed messages, and the client keeps
  the session alive meanwhile (paced ``/meta/connect``; the new messages of those replies are
  left with the server, which re-sends them once there is room: ``ack_shed`` in the status);
- neither: the client stops fetching; a session that expired meanwhile may have taken messages
  with it, which is counted (``possible_gaps_total{reason="session_expired"}``) and logged.

A replay id older than the server's retention is a gap: counted, logged, published as a record
to the control exchange, then handled by the endpoint's ``gap_policy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog

from bridge.amqp import EndpointPublisher, PublishResult
from bridge.auth.errors import FailureKind, classify_failure, limit_label
from bridge.cometd import Client, ConnectionType
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
from bridge.cometd.exceptions import ClientInvalidOperation, CometdError, ServerError
from bridge.cometd.ext import (
    AckExtension,
    InvalidReplayId,
    ReplayExtension,
    ReplayGapError,
    event_time_of,
    gap_record,
    gap_start,
    initial_start,
    invalid_replay_id,
)
from bridge.cometd.extensions import AuthExtension, Extension
from bridge.metrics import EndpointMetrics
from bridge.positions import PositionKeeper, PositionStoreError
from bridge.routing import (
    RoutedMessage,
    Router,
    orjson_body_encoder,
    replay_id_of,
)
from bridge.settings import Endpoint
from bridge.summary import summarize


__all__ = ["EndpointWorker", "EndpointStatus", "GapSink", "PublisherMetricsHooks"]

log = structlog.get_logger("bridge.endpoint")

# Restart backoff after a failed session: doubles from FIRST up to MAX, full jitter; a session
# that stayed up for RESET_AFTER seconds starts the next failure from FIRST again.
_RESTART_FIRST = 0.5
_RESTART_MAX = 30.0
_RESTART_RESET_AFTER = 60.0
try:  # optional speed-up, see the Router comment in EndpointWorker.__init__
    _JSON_LOADS: Callable[[str], Any] = importlib.import_module("orjson").loads
except ImportError:
    _JSON_LOADS = json.loads

_SESSION_LOST_REASONS = frozenset({"buffer_full", "unknown_session", "auth", "max_interval"})

# A quota/limit refusal (e.g. Salesforce's concurrent user limit) restarts after this long.
_QUOTA_BACKOFF_MIN = 60.0
_QUOTA_BACKOFF_MAX = 180.0

# How long a replay endpoint's buffer may stay full before its session is ended on purpose:
# long enough to ride out a burst, short against any server's reconnect budget (Salesforce
# 40 s, CometD's default maxInterval 10 s), so the server never expires a session we hold.
_PAUSE_GRACE = 1.0

GapSink = Callable[[str, Mapping[str, Any]], Awaitable[None]]
"""``sink(endpoint, record)`` publishes a gap record to the control exchange (raises on failure)."""


class _BufferFull(Exception):
    """Internal: a replay session ended on purpose because the buffer stayed full."""


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
    delivery: str | None = None  # "replay", "ack" or "none": what the server supports
    gaps: int = 0
    last_gap: dict[str, Any] | None = None


ClientFactory = Callable[..., Client]


class EndpointWorker:
    """Runs one endpoint until :meth:`stop`: client → router → publisher, restarted on failure.

    ``positions`` (given when the endpoint replays) records what the broker confirmed;
    ``gap_sink`` publishes gap records. Call :meth:`close` after the publisher settled, to
    write the final positions.
    """

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
        url_resolver: Callable[[], Awaitable[str]] | None = None,
        client_factory: ClientFactory = Client,
        positions: PositionKeeper | None = None,
        gap_sink: GapSink | None = None,
    ) -> None:
        self.name = name
        self.config = config
        # Salesforce endpoints may leave ``url`` unset: it then comes from the token response
        # (``instance_url``), fetched by ``url_resolver`` at the first session and retried
        # with the session backoff while the token endpoint is unavailable.
        self.url: str | None = url
        self._url_resolver = url_resolver
        if url is None and url_resolver is None:
            self.url = config.resolve_url()
        self.status = EndpointStatus()
        self._publisher = publisher
        self._metrics = metrics
        self._auth = auth
        self._client_factory = client_factory
        # orjson on both sides (decode in the client, encode the body) when it is installed:
        # ~12 % less CPU per message (bench/RESULTS.md); message ids never depend on it.
        self._router = Router.from_settings(name, config, body_encoder=orjson_body_encoder())
        self._client: Client | None = None
        self._keeper = positions
        self._gap_sink = gap_sink
        # Created once and reused by every session: the replay extension reads the keeper's
        # confirmed positions at send time, the ack extension starts over at each handshake.
        start = initial_start(config.replay, config.replay_fallback)
        self._replay = ReplayExtension(self._position, start) if start is not None else None
        self._ack = AckExtension() if config.ack != "off" else None
        self._extensions: list[Extension] = [
            *extensions,
            *(e for e in (self._replay, self._ack) if e is not None),
        ]
        self._keeper_task: asyncio.Task[None] | None = None
        self._outstanding = 0  # handed to the publisher, not yet settled
        self.received_total = 0  # data messages taken from the client and handed on
        self.confirmed_total = 0  # settled by the broker (confirmed or returned)
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = asyncio.Event()
        self._buffer_full = asyncio.Event()  # set: end the replay session on purpose
        self._pause_timer: asyncio.TimerHandle | None = None
        self._up = False
        self._failed = False
        self._log = log.bind(endpoint=name)
        metrics.pending_capacity.set(config.max_pending_count)

    # -- state for /readyz, /status and the gauges -------------------------------------------

    @property
    def up(self) -> bool:
        """Handshaken, subscribed, and the publisher channel is open."""
        return self._up and self._publisher.ready

    @property
    def failed(self) -> bool:
        """Stopped for good (gap policy ``fail``, unreadable positions); needs an operator."""
        return self._failed

    @property
    def outstanding(self) -> int:
        """Messages handed to the publisher and not yet settled by the broker."""
        return self._outstanding

    @property
    def buffered(self) -> int:
        """Messages in the client's buffer, not yet taken for publishing."""
        client = self._client
        return client.pending_count if client is not None else 0

    @property
    def replay_active(self) -> bool:
        """Replay is configured and the current (or last) server supports it."""
        return self._replay is not None and self._replay.supported is True

    @property
    def ack_active(self) -> bool:
        return self._ack is not None and self._ack.supported is True

    def refresh_gauges(self) -> None:
        """Set the level gauges (called periodically, not per message)."""
        m = self._metrics
        m.up.set(1 if self.up else 0)
        m.pending.set(self.buffered + self._outstanding)
        m.inflight.set(self._publisher.inflight)

    def position_times(self) -> Iterator[tuple[str, str, float]]:
        """(endpoint, channel, unix time the confirmed position last advanced), for
        ``replay_position_age_seconds``."""
        if self._keeper is None:
            return
        for channel, position in self._keeper.snapshot().items():
            yield self.name, channel, position.updated_at

    def status_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        s = self.status
        result: dict[str, Any] = {
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
            "replay": self.config.replay,
            "gap_policy": self.config.gap_policy,
            "delivery": s.delivery,
            "gaps": s.gaps,
            "last_gap": s.last_gap,
        }
        if self._ack is not None:
            # Left with the server while the buffer was full (re-sent later, not lost).
            result["ack_shed"] = self._ack.messages_shed
        if self._keeper is not None:
            ages = self._keeper.ages(now)
            result["positions"] = {
                channel: {
                    "replay_id": p.replay_id,
                    "age_seconds": ages.get(channel, 0.0),
                    "updated_at": p.updated_at,
                    "event_time": p.event_time,
                }
                for channel, p in sorted(self._keeper.snapshot().items())
            }
            result["positions_unflushed"] = self._keeper.unflushed
        return result

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a session open and stream it until :meth:`stop`; never raises for a failure.

        Returns early, with ``state == "failed"``, when the endpoint cannot go on without an
        operator (unreadable positions file, gap policy ``fail``): restarting would not help.
        """
        structlog.contextvars.bind_contextvars(endpoint=self.name)
        try:
            positions_ok = await self._start_positions()
        except Exception as exc:  # anything at start needs an operator: say so, never hang
            self._fail(f"endpoint could not start: {_describe(exc)}")
            return
        if not positions_ok:
            return
        attempt = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except _BufferFull:
                await self._wait_for_broker()
                continue
            except ReplayGapError as exc:
                self._fail(str(exc))
                return
            except Exception as exc:  # every failure of one session is retried, never fatal
                self.status.last_error = _describe(exc)
                self._log.warning("endpoint session ended", error=self.status.last_error)
                quota = self._quota_refusal(exc)
            else:
                quota = None
            finally:
                self._set_up(False)
            if self._stopping.is_set():
                break
            if time.monotonic() - started > _RESTART_RESET_AFTER:
                attempt = 0
            delay = random.uniform(0, min(_RESTART_MAX, _RESTART_FIRST * 2**attempt))
            if quota is not None:
                # Retrying a quota refusal quickly only burns more of the quota (aiocometd#1
                # looped into "concurrent user limit exceeded"): wait minutes, not seconds.
                delay = random.uniform(_QUOTA_BACKOFF_MIN, _QUOTA_BACKOFF_MAX)
                self._metrics.auth_limit(quota)
                self.status.last_error = f"limit exhausted ({quota}): {self.status.last_error}"
                self._log.error(
                    "the server refused the session: a quota/limit is exhausted; backing off",
                    limit=quota,
                    retry_in=round(delay, 1),
                )
            attempt += 1
            self.status.restarts += 1
            self.status.state = "restarting"
            self._log.info("restarting endpoint session", delay=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
        self.status.state = "stopped"

    @staticmethod
    def _quota_refusal(exc: BaseException) -> str | None:
        """The exhausted limit's label when ``exc`` is the server refusing for a quota."""
        if not isinstance(exc, ServerError) or not isinstance(exc.response, Mapping):
            return None
        failure = classify_failure(exc.response)
        if failure.kind is not FailureKind.QUOTA:
            return None
        return failure.limit or "other"

    def request_stop(self) -> None:
        """Stop fetching; :meth:`run` drains what was received and returns."""
        self._stopping.set()

    async def wait_settled(self) -> None:
        """Return once every message handed to the publisher is settled."""
        await self._publisher.wait_idle()

    async def close(self) -> None:
        """Write the final positions. Call it after :meth:`run` returned and the publisher
        settled what it could: what is confirmed by then is what the next start resumes from."""
        task, self._keeper_task = self._keeper_task, None
        if task is None or self._keeper is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await self._keeper.close()
        except PositionStoreError as exc:
            self._log.error("final replay positions could not be written", error=str(exc))
            return
        self._log.info(
            "replay positions stored",
            positions={ch: p.replay_id for ch, p in self._keeper.snapshot().items()},
        )

    def mark_failed(self, reason: str) -> None:
        """Show the endpoint as stopped for good (its task ended unexpectedly)."""
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self._failed = True
        self.status.state = "failed"
        self.status.last_error = reason
        self._log.error("endpoint stopped until an operator intervenes", reason=reason)

    # -- positions ---------------------------------------------------------------------------

    def _position(self, channel: str) -> int | None:
        return None if self._keeper is None else self._keeper.position(channel)

    async def _start_positions(self) -> bool:
        """Load the stored positions (``replay=stored``) and start flushing; False if the
        endpoint must not start (a corrupt file is never silently replaced by a fresh start)."""
        keeper = self._keeper
        if keeper is None:
            return True
        if self.config.replay == "stored":
            try:
                stored = await asyncio.to_thread(keeper.load)
            except PositionStoreError as exc:
                self._fail(f"cannot load stored replay positions: {exc}")
                return False
            store = keeper.store
            aside = await asyncio.to_thread(store.corrupt_copies, self.name)
            if aside and not await asyncio.to_thread(store.exists, self.name):
                # The file was set aside as corrupt by an earlier start and nobody decided
                # since: starting from the fallback now would silently skip (or flood) what the
                # file stood for. `positions set|clear` writes a file, which is that decision.
                self._fail(
                    f"the positions file {store.path(self.name)} was set aside as corrupt "
                    f"({aside[-1].name}); set positions with `cometd-bridge positions set` "
                    "(or `clear` to start from replay_fallback), or restore the file"
                )
                return False
            self._log.info(
                "replay positions loaded", positions={ch: p.replay_id for ch, p in stored.items()}
            )
        self._keeper_task = asyncio.create_task(
            self._keep_positions(keeper), name=f"positions-{self.name}"
        )
        return True

    async def _keep_positions(self, keeper: PositionKeeper) -> None:
        # Positions stay in memory while the file cannot be written; the keeper retries every
        # flush interval. Resuming after a crash meanwhile would repeat more, never skip.
        await keeper.run(on_error=self._positions_not_written)

    def _positions_not_written(self, exc: PositionStoreError) -> None:
        self.status.last_error = f"positions not written: {exc}"
        self._log.error("replay positions could not be written; retrying", error=str(exc))

    # -- one client session ------------------------------------------------------------------

    async def _session(self) -> None:
        self.status.state = "connecting"
        if self.url is None:
            assert self._url_resolver is not None
            self.url = await self._url_resolver()
            self._log.info("endpoint URL derived from the token response", url=self.url)
        client = self._client_factory(
            self.url,
            [ConnectionType(t) for t in self.config.connection_types],
            connection_timeout=self.config.connection_timeout,
            max_pending_count=self.config.max_pending_count,
            max_pending_bytes=self.config.max_pending_bytes,
            extensions=self._extensions,
            auth=self._auth,
            headers=dict(self.config.headers),
            listener=self._on_client_event,
            json_loads=_JSON_LOADS,
        )
        self._client = client
        self._buffer_full.clear()
        try:
            await client.open()
            self._note_delivery()
            for channel in self.config.channels:
                await self._subscribe(client, channel)
            self.status.subscribed = sorted(client.subscriptions)
            self.status.state = "streaming"
            self._set_up(True)
            self._log.info(
                "endpoint streaming",
                connection_type=str(client.connection_type),
                channels=self.status.subscribed,
                delivery=self.status.delivery,
            )
            await self._pump(client)
        finally:
            self._set_up(False)
            self._cancel_pause_timer()
            # Close politely, then publish whatever the client had already received: a
            # closed client still hands out its buffer, so nothing fetched is left behind.
            with contextlib.suppress(Exception):
                await client.close()
            await self._drain_buffer(client)
            self._client = None

    def _note_delivery(self) -> None:
        """Log once per change what the server offers: replay, ack, or neither."""
        delivery = "replay" if self.replay_active else "ack" if self.ack_active else "none"
        if delivery == self.status.delivery:
            return
        self.status.delivery = delivery
        if self._replay is not None and delivery != "replay":
            self._log.warning(
                "the server does not replay: a lost session can lose messages", delivery=delivery
            )
        elif self.config.ack == "on" and self._replay is None and delivery != "ack":
            self._log.warning("ack=on but the server does not acknowledge messages")

    async def _subscribe(self, client: Client, channel: str) -> None:
        try:
            await client.subscribe(channel)
        except ServerError as exc:
            gap = self._gap_of(exc, channel)
            if gap is None:
                raise
            await self._handle_gap(gap)
            # From the policy's start now; a second refusal ends the session (and is retried).
            await client.subscribe(channel)

    async def _pump(self, client: Client) -> None:
        stopping = self._stopping
        stop_wait = asyncio.ensure_future(stopping.wait())
        full_wait = asyncio.ensure_future(self._buffer_full.wait())
        try:
            while not stopping.is_set():
                if self._buffer_full.is_set():
                    raise _BufferFull
                room = self.config.max_inflight - self._outstanding
                if room <= 0:
                    self._room.clear()
                    room_wait = asyncio.ensure_future(self._room.wait())
                    await asyncio.wait(
                        {room_wait, stop_wait, full_wait}, return_when=asyncio.FIRST_COMPLETED
                    )
                    room_wait.cancel()
                    continue
                receive = asyncio.ensure_future(client.receive_many(room))
                await asyncio.wait(
                    {receive, stop_wait, full_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                if not receive.done():
                    receive.cancel()
                    with contextlib.suppress(asyncio.CancelledError, CometdError):
                        await receive
                    continue
                try:
                    messages = receive.result()
                except ServerError as exc:
                    # A failed resubscription after a re-handshake: a gap, or a real failure.
                    subscription = _subscription_of(exc.response)
                    gap = self._gap_of(exc, subscription)
                    if gap is None or subscription not in self.config.channels:
                        raise  # never subscribe to (nor store) a channel the server named
                    await self._handle_gap(gap)
                    await self._subscribe(client, subscription)
                    continue
                self._submit(messages)
        finally:
            stop_wait.cancel()
            full_wait.cancel()

    async def _wait_for_broker(self) -> None:
        """After ending a replay session because the buffer stayed full: wait until the broker
        confirmed everything handed to it; the next session replays from there."""
        self._metrics.reconnect("buffer_full")
        self.status.reconnects += 1
        self.status.state = "waiting_for_broker"
        self._log.warning(
            "buffer full: session ended on purpose; it resumes from the stored position once "
            "the broker confirmed what is pending",
            outstanding=self._outstanding,
        )
        idle = asyncio.ensure_future(self.wait_settled())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({idle, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            stop.cancel()
        self._buffer_full.clear()
        self._metrics.fetch_paused.set(0)

    async def _drain_buffer(self, client: Client) -> None:
        while client.pending_count:
            try:
                self._submit(await client.receive_many(max(1, client.pending_count)))
            except (ClientInvalidOperation, CometdError):
                break

    # -- publishing and confirms -------------------------------------------------------------

    def _submit(self, messages: list[dict[str, Any]]) -> None:
        now = time.time()
        route = self._router.route
        submit = self._publisher.submit
        keeper = self._keeper
        tracked = keeper is not None or self._ack is not None
        routed = 0
        repeats = 0
        for message in messages:
            # Each message on its own: whatever one of them does, the rest of the batch goes on.
            try:
                msg = route(message, now)
            except Exception as exc:  # RoutingError, or input the router did not foresee
                self._skip(message, "unroutable_message", exc)
                continue
            try:
                # The original message rides along to its confirm when the ack extension
                # needs it (its batch tag) or the position wants the event's own time.
                submit(
                    msg, partial(self._on_settled_tracked, message) if tracked else self._on_settled
                )
            except RecursionError as exc:
                self._skip(message, "unpublishable", exc)
                continue
            except RuntimeError:  # the publisher is closed: the session ends, nothing skipped
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
            self._outstanding += routed
            self.received_total += routed
            self._metrics.received.inc(routed)
            self._metrics.last_message_timestamp.set(now)
            self.status.last_message_at = now
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
            error=_error_text(error),
            channel=summarize(channel, limit=200) if channel is not None else None,
            message=summarize(message),
        )
        if not isinstance(message, dict):
            return
        if self._ack is not None:
            self._ack.confirm(message)
        # A replay position moves over a skipped event once everything received before it is
        # confirmed, so a poison event is not replayed first on every new session.
        replay_id = replay_id_of(message.get("data"))
        if self._keeper is not None and isinstance(channel, str) and isinstance(replay_id, int):
            self._keeper.received(channel, replay_id)
            self._keeper.confirmed(channel, replay_id)

    def _on_settled(self, msg: RoutedMessage, result: PublishResult) -> None:
        self._outstanding -= 1
        self.confirmed_total += 1
        if result is PublishResult.CONFIRMED or result is PublishResult.ALTERNATE:
            self._metrics.published.inc()
        elif result is PublishResult.UNPUBLISHABLE:  # logged by the publisher
            self._metrics.malformed("unpublishable")
        self._metrics.publish_latency.observe(time.time() - msg.timestamp)
        if self._outstanding < self.config.max_inflight:
            self._room.set()

    def _on_settled_tracked(
        self, original: dict[str, Any], msg: RoutedMessage, result: PublishResult
    ) -> None:
        self._on_settled(msg, result)
        replay_id = msg.replay_id
        if self._keeper is not None and isinstance(replay_id, int):
            self._keeper.confirmed(msg.channel, replay_id, event_time_of(original))
        if self._ack is not None:
            self._ack.confirm(original)

    # -- replay gaps -------------------------------------------------------------------------

    def _gap_of(self, exc: ServerError, channel: str | None) -> InvalidReplayId | None:
        if self._replay is None:
            return None
        gap = invalid_replay_id(exc.response)
        ours = {c.split("?", 1)[0] for c in self.config.channels}
        if gap is not None and gap.channel not in ours and channel:
            # The channel we subscribed to, never one the server named: it becomes a stored
            # position and a metric label.
            gap = dataclasses.replace(gap, channel=channel.split("?", 1)[0])
        return gap

    async def _handle_gap(self, gap: InvalidReplayId) -> None:
        """Count, log and publish the gap, then apply the gap policy (``fail`` raises
        :class:`ReplayGapError`)."""
        policy = self.config.gap_policy
        self._metrics.replay_gap(gap.channel)
        record = gap_record(self.name, gap, policy, time.time())
        self.status.gaps += 1
        self.status.last_gap = record
        self._log.error(
            "replay position is older than the server's retention: events after it are lost",
            channel=gap.channel,
            replay_id=gap.replay_id,
            gap_policy=policy,
            server_error=gap.error,
        )
        if self._gap_sink is not None:
            try:
                await self._gap_sink(self.name, record)
            except Exception as exc:  # the metric and the log still tell; never hide the policy
                self._log.error("gap record could not be published", error=_describe(exc))
        start = gap_start(policy, self.name, gap)
        if self._keeper is not None:
            self._keeper.reset(gap.channel, None)
        assert self._replay is not None  # _gap_of only finds gaps when replaying
        self._replay.set_start(gap.channel, start)

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
        elif isinstance(event, Connected):
            if self._up:
                s.state = "streaming"
        elif isinstance(event, MessageSkipped):
            m.malformed(event.reason)
        elif isinstance(event, FetchPaused):
            m.fetch_paused.set(1)
            s.state = "paused"
            if self.replay_active and self._pause_timer is None:
                loop = asyncio.get_running_loop()
                self._pause_timer = loop.call_later(_PAUSE_GRACE, self._buffer_full.set)
        elif isinstance(event, FetchResumed):
            self._cancel_pause_timer()
            if not self._buffer_full.is_set():
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
        elif isinstance(event, PossibleGap):
            m.possible_gap(event.reason)
            self._log.warning(
                "events may be lost and the server cannot send them again",
                reason=event.reason,
                error=event.detail,
                delivery=s.delivery,
            )

    def _note_lost_session(self, reason: str) -> None:
        """A server without replay forgets what it queued for a session it dropped."""
        # Each of these means the server no longer holds our session: "auth" (a Salesforce-like
        # server removes the session of an expired token) and "max_interval" (unconnected for
        # longer than the server keeps a session) included.
        if self.replay_active or reason not in _SESSION_LOST_REASONS:
            return
        gap_reason = "session_expired" if reason == "buffer_full" else "session_lost"
        self._metrics.possible_gap(gap_reason)
        self._log.warning(
            "the server dropped the session; messages it had queued for it may be lost "
            "(the server offers no replay)",
            reason=gap_reason,
            delivery=self.status.delivery,
        )

    def _cancel_pause_timer(self) -> None:
        timer, self._pause_timer = self._pause_timer, None
        if timer is not None:
            timer.cancel()

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.up.set(1 if self.up else 0)


def _subscription_of(response: Mapping[str, Any] | None) -> str | None:
    subscription = response.get("subscription") if response else None
    if isinstance(subscription, list):
        subscription = subscription[0] if subscription else None
    return subscription if isinstance(subscription, str) else None


def _error_text(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` cut to ``limit`` characters, for a skip log line."""
    if isinstance(exc, RecursionError):
        return "RecursionError: nested too deeply"
    try:
        text = _describe(exc)
    except Exception:  # an exception whose str() fails: its type still says something
        text = type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
