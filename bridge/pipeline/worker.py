"""One endpoint: a CometD client's messages, routed and published with broker confirms.

The pipeline is the endpoint's :class:`~bridge.pipeline.source.Source` (``receive_many``) →
:class:`~bridge.routing.Router` → its :class:`~bridge.pipeline.sink.Sink`, with
:mod:`~bridge.pipeline.settlement` settling confirms, :mod:`~bridge.pipeline.gaps` handling
replay gaps and :mod:`~bridge.pipeline.status` observing. Many publishes are in flight at
once; the window (``max_inflight``) bounds them, and while it is full nothing more is taken
from the source, so its own bounded buffer fills and it stops fetching: back-pressure reaches
the CometD server without dropping anything.

A message counts as delivered only when the broker confirmed it. A client session that ends
(server gone, session closed, ``connection_timeout``) is re-opened by :meth:`run` with
jittered backoff; messages already handed to the sink stay there and are confirmed (or
re-published) whatever happens to the client.

No loss across sessions and restarts (replay servers): each message's replay id enters the
endpoint's :class:`~bridge.positions.PositionKeeper` when it is handed to the sink and is
confirmed there when the broker settled it, so the stored position never passes an unconfirmed
message; every (re)subscription replays from it. The ack extension, where the server has it,
acknowledges only broker-confirmed batches. Back-pressure, by server kind:

- replay: a buffer full for longer than ``_PAUSE_GRACE`` ends the session on purpose
  (reconnect reason ``buffer_full``); once the sink is idle a new session replays from the
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
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import structlog

from bridge.auth.errors import FailureKind, classify_failure
from bridge.cometd import Client
from bridge.cometd.events import ClientEvent, FetchPaused, FetchResumed, MessageSkipped
from bridge.cometd.exceptions import ClientInvalidOperation, CometdError, ServerError
from bridge.cometd.extensions import AuthExtension, Extension
from bridge.metrics import EndpointMetrics
from bridge.pipeline.gaps import GapHandler, GapSink, ReplayGapError, initial_start
from bridge.pipeline.settlement import Settlement, describe
from bridge.pipeline.sink import Sink
from bridge.pipeline.source import ClientFactory, CometdSource, Source
from bridge.pipeline.status import EndpointStatus, StatusObserver, render_status
from bridge.positions import PositionKeeper, PositionStoreError
from bridge.routing import Router, orjson_body_encoder
from bridge.settings import Endpoint


__all__ = ["EndpointWorker"]

log = structlog.get_logger("bridge.pipeline.worker")

# Restart backoff after a failed session: doubles from FIRST up to MAX, full jitter; a session
# that stayed up for RESET_AFTER seconds starts the next failure from FIRST again.
_RESTART_FIRST = 0.5
_RESTART_MAX = 30.0
_RESTART_RESET_AFTER = 60.0

# A quota/limit refusal (e.g. Salesforce's concurrent user limit) restarts after this long.
_QUOTA_BACKOFF_MIN = 60.0
_QUOTA_BACKOFF_MAX = 180.0

# How long a replay endpoint's buffer may stay full before its session is ended on purpose:
# long enough to ride out a burst, short against any server's reconnect budget (Salesforce
# 40 s, CometD's default maxInterval 10 s), so the server never expires a session we hold.
_PAUSE_GRACE = 1.0

# How long a (re)subscription on a replay server waits for what the ended session delivered to
# be confirmed, so it resumes after it: a confirm takes milliseconds, and nothing new arrives
# before the subscribe. A broker that cannot confirm (down, blocked) costs one such wait per
# re-handshake; the server then replays the unconfirmed rest (duplicates, never a loss).
_SETTLE_BEFORE_SUBSCRIBE = 0.5


class _BufferFull(Exception):
    """Internal: a replay session ended on purpose because the buffer stayed full."""


class EndpointWorker:
    """Runs one endpoint until :meth:`stop`: source → router → sink, restarted on failure.

    ``positions`` (given when the endpoint replays) records what the broker confirmed;
    ``gap_sink`` publishes gap records. Call :meth:`close` after the sink settled, to
    write the final positions.
    """

    def __init__(
        self,
        name: str,
        config: Endpoint,
        *,
        sink: Sink,
        metrics: EndpointMetrics,
        auth: AuthExtension | None = None,
        extensions: Sequence[Extension] = (),
        url: str | None = None,
        url_resolver: Callable[[], Awaitable[str]] | None = None,
        client_factory: ClientFactory = Client,
        positions: PositionKeeper | None = None,
        gap_sink: GapSink | None = None,
        lease_epoch: int | None = None,
    ) -> None:
        """``lease_epoch``: the epoch of the endpoint's lease when replicas coordinate through
        RabbitMQ (on every message as ``cometd-lease-epoch``); None in ``file`` mode."""
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
        self._sink = sink
        self._metrics = metrics
        self._keeper = positions
        self._log = log.bind(endpoint=name)
        start = initial_start(config.replay, config.replay_fallback)
        self._replaying = start is not None
        self._acking = config.ack != "off"
        self._observer = StatusObserver(
            metrics,
            self.status,
            self._log,
            is_up=lambda: self._up,
            holding_full=lambda: self._buffer_full.is_set(),
            replay_active=lambda: self.replay_active,
        )
        # The one place the endpoint's source is built.
        self._source: Source = CometdSource(
            config,
            replay_start=start,
            position=self._position,
            settle=self._settle_before_subscribe,
            ack=self._acking,
            extensions=extensions,
            auth=auth,
            listener=self._on_client_event,
            client_factory=client_factory,
        )
        # orjson on both sides (decode in the client, encode the body) when it is installed:
        # ~12 % less CPU per message (bench/RESULTS.md); message ids never depend on it.
        router = Router.from_settings(
            name, config, body_encoder=orjson_body_encoder(), lease_epoch=lease_epoch
        )
        self._settlement = Settlement(
            router=router,
            sink=sink,
            source=self._source,
            keeper=positions,
            track_acks=self._acking,
            metrics=metrics,
            status=self.status,
            log=self._log,
            max_inflight=config.max_inflight,
            endpoint=name,
            dead_letter_exchange=config.dead_letter_exchange,
        )
        self._gaps = (
            GapHandler(
                name,
                config,
                set_start=self._source.set_start,
                metrics=metrics,
                status=self.status,
                log=self._log,
                keeper=positions,
                sink=gap_sink,
                describe=describe,
            )
            if self._replaying
            else None
        )
        self._keeper_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._buffer_full = asyncio.Event()  # set: end the replay session on purpose
        self._pause_timer: asyncio.TimerHandle | None = None
        self._up = False
        self._failed = False
        # The lease is lost: nothing more is received, acknowledged or stored (abandon()).
        self._abandoned = False
        # The task running _pump (it empties the source's buffer), None while it does not run.
        self._pump_task: asyncio.Task[Any] | None = None
        self._handed = asyncio.Event()  # set by _pump after each batch handed to the sink
        metrics.pending_capacity.set(config.max_pending_count)

    # -- state for /readyz, /status and the gauges -------------------------------------------

    @property
    def up(self) -> bool:
        """Handshaken, subscribed, and the sink is ready."""
        return self._up and self._sink.ready

    @property
    def failed(self) -> bool:
        """Stopped for good (gap policy ``fail``, unreadable positions); needs an operator."""
        return self._failed

    @property
    def outstanding(self) -> int:
        """Messages handed to the sink and not yet settled by the broker."""
        return self._settlement.outstanding

    @property
    def received_total(self) -> int:
        """Data messages taken from the source and handed on."""
        return self._settlement.received_total

    @property
    def confirmed_total(self) -> int:
        """Messages settled by the sink (confirmed or returned)."""
        return self._settlement.confirmed_total

    @property
    def buffered(self) -> int:
        """Messages in the source's buffer, not yet taken for publishing."""
        return self._source.pending_count

    @property
    def replay_active(self) -> bool:
        """Replay is configured and the current (or last) server supports it."""
        return self._source.replay_active

    @property
    def ack_active(self) -> bool:
        return self._source.ack_active

    def refresh_gauges(self) -> None:
        """Set the level gauges (called periodically, not per message)."""
        m = self._metrics
        m.up.set(1 if self.up else 0)
        m.pending.set(self.buffered + self.outstanding)
        m.inflight.set(self._sink.inflight)

    def position_times(self) -> Iterator[tuple[str, str, float]]:
        """(endpoint, channel, unix time the confirmed position last advanced), for
        ``replay_position_age_seconds``."""
        if self._keeper is None:
            return
        for channel, position in self._keeper.snapshot().items():
            yield self.name, channel, position.updated_at

    def status_dict(self, now: float | None = None) -> dict[str, Any]:
        return render_status(
            self.status,
            self.config,
            now=time.time() if now is None else now,
            up=self.up,
            url=self.url,
            buffered=self.buffered,
            inflight=self._sink.inflight,
            outstanding=self.outstanding,
            ack_shed=self._source.ack_shed,
            keeper=self._keeper,
        )

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
            self._fail(f"endpoint could not start: {describe(exc)}")
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
                self.status.last_error = describe(exc)
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

    def abandon(self) -> None:
        """The endpoint's lease is lost (its AMQP connection or lease channel closed): stop at
        once. The session ends without handing its buffer on, no position is written any more
        (the flush task is cancelled; :meth:`close` must not be called), and what the sink had
        unconfirmed is dropped by the caller: the new owner resumes from the shared position."""
        self._abandoned = True
        self._stopping.set()
        task, self._keeper_task = self._keeper_task, None
        if task is not None:
            task.cancel()

    async def wait_settled(self) -> None:
        """Return once every message handed to the sink is settled."""
        await self._sink.wait_idle()

    async def close(self) -> None:
        """Write the final positions. Call it after :meth:`run` returned and the sink
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

    async def _settle_before_subscribe(self) -> None:
        """Awaited before a subscribe reads the confirmed positions: let what the ended session
        delivered be confirmed first, so the server does not replay what the sink already
        holds (a resubscription after a session dropped mid-stream). Bounded; skipped while
        the sink cannot confirm. Only the timing changes: the position read is the confirmed
        one either way."""
        if self._abandoned or self._stopping.is_set() or not self._sink.ready:
            return
        source = self._source
        try:
            async with asyncio.timeout(_SETTLE_BEFORE_SUBSCRIBE):
                # A resubscription within a live session: the pump empties the buffer
                # meanwhile. Before the pump runs (a new session), the buffer holds nothing
                # of the channels being subscribed; and the pump's own subscribe (after a
                # gap) cannot wait for itself.
                while source.pending_count and self._pump_task not in (
                    None,
                    asyncio.current_task(),
                ):
                    self._handed.clear()
                    await self._handed.wait()
                if self.outstanding:
                    await self.wait_settled()
        except TimeoutError:
            self._log.info(
                "resubscribing before the broker confirmed what the ended session delivered; "
                "the server replays what is unconfirmed (duplicates)",
                outstanding=self.outstanding,
                buffered=source.pending_count,
                waited_s=_SETTLE_BEFORE_SUBSCRIBE,
            )

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

    # -- one session -------------------------------------------------------------------------

    async def _session(self) -> None:
        self.status.state = "connecting"
        if self.url is None:
            assert self._url_resolver is not None
            self.url = await self._url_resolver()
            self._log.info("endpoint URL derived from the token response", url=self.url)
        source = self._source
        self._buffer_full.clear()
        try:
            await source.open(self.url)
            self._note_delivery()
            for channel in self.config.channels:
                await self._subscribe(channel)
            self.status.subscribed = sorted(source.subscriptions)
            self.status.state = "streaming"
            self._set_up(True)
            self._log.info(
                "endpoint streaming",
                connection_type=source.connection_type,
                channels=self.status.subscribed,
                delivery=self.status.delivery,
            )
            await self._pump()
        finally:
            self._set_up(False)
            self._cancel_pause_timer()
            # Close politely, then publish whatever the source had already received: a
            # closed session still hands out its buffer, so nothing fetched is left behind.
            with contextlib.suppress(Exception):
                await source.close()
            if not self._abandoned:
                await self._drain_buffer()
            source.release()

    def _note_delivery(self) -> None:
        """Log once per change what the server offers: replay, ack, or neither."""
        delivery = "replay" if self.replay_active else "ack" if self.ack_active else "none"
        if delivery == self.status.delivery:
            return
        self.status.delivery = delivery
        if self._replaying and delivery != "replay":
            self._log.warning(
                "the server does not replay: a lost session can lose messages", delivery=delivery
            )
        elif self.config.ack == "on" and not self._replaying and delivery != "ack":
            self._log.warning("ack=on but the server does not acknowledge messages")

    async def _subscribe(self, channel: str) -> None:
        source = self._source
        try:
            await source.subscribe(channel)
        except ServerError as exc:
            gaps = self._gaps
            gap = None if gaps is None else gaps.gap_of(exc, channel)
            if gap is None or gaps is None:
                raise
            await gaps.handle(gap)
            # From the policy's start now; a second refusal ends the session (and is retried).
            await source.subscribe(channel)

    async def _pump(self) -> None:
        source = self._source
        settlement = self._settlement
        stopping = self._stopping
        stop_wait = asyncio.ensure_future(stopping.wait())
        full_wait = asyncio.ensure_future(self._buffer_full.wait())
        self._pump_task = asyncio.current_task()
        try:
            while not stopping.is_set():
                if self._buffer_full.is_set():
                    raise _BufferFull
                room = self.config.max_inflight - settlement.outstanding
                if room <= 0:
                    settlement.room.clear()
                    room_wait = asyncio.ensure_future(settlement.room.wait())
                    await asyncio.wait(
                        {room_wait, stop_wait, full_wait}, return_when=asyncio.FIRST_COMPLETED
                    )
                    room_wait.cancel()
                    continue
                receive = asyncio.ensure_future(source.receive_many(room))
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
                    gaps = self._gaps
                    gap = None if gaps is None else gaps.gap_of(exc, subscription)
                    if gap is None or gaps is None or subscription not in self.config.channels:
                        raise  # never subscribe to (nor store) a channel the server named
                    await gaps.handle(gap)
                    await self._subscribe(subscription)
                    continue
                settlement.hand_over(messages)
                self._handed.set()
        finally:
            self._pump_task = None
            self._handed.set()
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
            outstanding=self.outstanding,
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

    async def _drain_buffer(self) -> None:
        source = self._source
        while source.pending_count and not self._abandoned:
            try:
                self._settlement.hand_over(await source.receive_many(max(1, source.pending_count)))
            except (ClientInvalidOperation, CometdError):
                break

    # -- client events: the observer counts, the worker decides -------------------------------

    def _on_client_event(self, event: ClientEvent) -> None:
        self._observer.observe(event)
        if isinstance(event, FetchPaused):
            if self.replay_active and self._pause_timer is None:
                loop = asyncio.get_running_loop()
                self._pause_timer = loop.call_later(_PAUSE_GRACE, self._buffer_full.set)
        elif isinstance(event, FetchResumed):
            self._cancel_pause_timer()
        elif isinstance(event, MessageSkipped) and event.message is not None:
            self._settlement.dead_letter_refused(event.reason, event.detail, event.message)

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
