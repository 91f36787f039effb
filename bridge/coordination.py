"""``BRIDGE_COORDINATION=rabbitmq``: which replica streams which endpoint.

One :class:`EndpointCoordinator` per configured endpoint runs on every replica. It registers
as a candidate on the endpoint's lease (:mod:`bridge.amqp.lease`) and waits. Once it holds
the token it reads the shared positions, writes them back with the epoch incremented
(confirmed), and only then starts the endpoint's worker, whose messages carry the epoch.

Three ways out of ownership:

- **lost** (the lease channel or the whole AMQP connection closed): the worker is abandoned at
  once (no more receiving, no ack, no position write) and its sink closed without waiting, so
  nothing it held unconfirmed is ever re-published; the new owner resumes from the shared
  position. The coordinator re-enters as a candidate once the connection is back.
- **released** (SIGTERM) and **handed over** (to balance): the worker drains, the broker
  confirms, the final position is written, and only then the lease is released, so the next
  owner starts exactly where this one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from bridge.amqp.lease import Lease, lease_queue, underlay_connection
from bridge.metrics import LEASE_CHANGE_REASONS, Metrics
from bridge.pipeline.worker import EndpointWorker
from bridge.positions.rabbitmq_store import (
    LeasedPositionStore,
    read_positions,
    write_positions,
)
from bridge.positions.store import PositionStoreError, StoredPosition


__all__ = ["Balancer", "EndpointCoordinator", "Ownership"]

log = structlog.get_logger("bridge.coordination")

_RETRY_FIRST = 0.5
_RETRY_MAX = 10.0
# How long a lost endpoint's session may take to close before its task is cancelled.
_ABANDON_GRACE = 2.0

Role = Literal["active", "standby"]


@dataclass(frozen=True, slots=True)
class Ownership:
    """What the supervisor needs to build an endpoint's worker while this replica owns it."""

    endpoint: str
    epoch: int
    store: LeasedPositionStore


# The supervisor's side: open the sink and build the worker (not started) for an ownership;
# close the endpoint's sink (deadline in seconds; returns how many were left unconfirmed).
StartWorker = Callable[[Ownership], Awaitable[EndpointWorker]]
CloseSink = Callable[[str, float], Awaitable[int]]


class EndpointCoordinator:
    """Candidate, owner, candidate again: one endpoint's ownership loop on this replica."""

    def __init__(
        self,
        endpoint: str,
        *,
        connection: Callable[[], Any],
        connected: asyncio.Event,
        start_worker: StartWorker,
        close_sink: CloseSink,
        metrics: Metrics,
        publish_timeout: float,
        shutdown_timeout: float,
        may_own: Callable[[], bool] | None = None,
    ) -> None:
        """``connection()`` returns the process's robust AMQP connection (the one the
        endpoint publishes on); ``connected`` is set while it is up; ``may_own()`` says
        whether this replica may take one more endpoint (the :class:`Balancer`'s share)."""
        self.endpoint = endpoint
        self._connection = connection
        self._connected = connected
        self._start_worker = start_worker
        self._close_sink = close_sink
        self._metrics = metrics
        self._publish_timeout = publish_timeout
        self._shutdown_timeout = shutdown_timeout
        self._stopping = asyncio.Event()
        self._handover = asyncio.Event()
        self._may_own = may_own
        # From the token's arrival until the lease is given up: counts against the share.
        self.owning = False
        self._lease: Lease | None = None
        self.worker: EndpointWorker | None = None
        self.epoch: int | None = None
        self.unconfirmed_at_exit = 0
        self._log = log.bind(endpoint=endpoint)
        metrics.endpoint_active.labels(endpoint).set(0)
        # Every reason's series from the start: increase() and the flapping alert see the
        # first lease change of a replica, not only the second.
        self._lease_changes = {
            reason: metrics.lease_changes.labels(endpoint, reason)
            for reason in LEASE_CHANGE_REASONS
        }

    @property
    def role(self) -> Role:
        return "active" if self.worker is not None else "standby"

    def stop(self) -> None:
        """Release the endpoint gracefully (if held) and stop being a candidate."""
        self._stopping.set()

    def hand_over(self) -> None:
        """Release the endpoint gracefully and become a candidate again (balance)."""
        self._handover.set()

    @property
    def handing_over(self) -> bool:
        return self._handover.is_set()

    async def run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            if not await self._wait(self._connected.wait()):
                break
            lease = Lease(self.endpoint, on_lost=self._on_lost)
            self._lease = lease
            try:
                await lease.enter(underlay_connection(self._connection()))
                await self._wait(lease.acquired.wait(), lease.closed.wait())
                if lease.held and not self._stopping.is_set():
                    if self._may_own is not None and not self._may_own():
                        # This replica has its share: pass the token on (the release requeues
                        # it for the next candidate) and stand aside for a moment.
                        await lease.release()
                        self._log.debug("lease declined: this replica owns its share")
                        await self._wait(asyncio.sleep(random.uniform(0.5, 1.5)))
                        continue
                    self.owning = True
                    try:
                        await self._own(lease)
                    finally:
                        self.owning = False
                    attempt = 0
                    continue
                if self._stopping.is_set() or not lease.closed.is_set():
                    continue
                reason = "lease channel closed before the token arrived"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker refused or went away: retry with backoff
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                await lease.release()
                self._lease = None
            delay = random.uniform(_RETRY_FIRST, min(_RETRY_MAX, _RETRY_FIRST * 2**attempt))
            attempt += 1
            self._log.warning("lease candidacy failed; retrying", error=reason, retry_in=delay)
            await self._wait(asyncio.sleep(delay))

    async def _wait(self, *aws: Awaitable[Any]) -> bool:
        """Wait for the first of ``aws`` or a stop; False if stopped."""
        # Only the waits made here are cancelled afterwards, never a task passed in (the
        # worker's: cancelling it mid-batch would lose what it had taken from the source).
        tasks = [a if isinstance(a, asyncio.Task) else asyncio.ensure_future(a) for a in aws]
        made = [t for t, a in zip(tasks, aws, strict=True) if t is not a]
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in [*made, stop]:
                t.cancel()
        return not self._stopping.is_set()

    def _on_lost(self) -> None:
        # Synchronous, from the lease channel's close: nothing more may be received, acked or
        # stored by this replica for the endpoint, from this very moment.
        worker = self.worker
        if worker is not None:
            worker.abandon()

    async def _own(self, lease: Lease) -> None:
        conn = underlay_connection(self._connection())
        positions_channel = await conn.channel(publisher_confirms=True)
        try:
            epoch, positions = await read_positions(positions_channel, self.endpoint)
            epoch += 1
            await write_positions(
                positions_channel,
                self.endpoint,
                epoch,
                positions,
                confirm_within=self._publish_timeout,
            )
            if not lease.held:
                return
            store = LeasedPositionStore(
                self.endpoint,
                positions,
                lambda current: self._write(lease, positions_channel, epoch, current),
                asyncio.get_running_loop(),
                timeout=self._publish_timeout,
            )
            self.epoch = epoch
            self._changed("acquired")
            self._log.info("lease acquired: this replica streams the endpoint", epoch=epoch)
            try:
                worker = await self._start_worker(Ownership(self.endpoint, epoch, store))
            except BaseException:
                await self._close_sink(self.endpoint, 0.0)  # the name is free for the next try
                raise
            if not lease.held:  # lost while the sink was opened
                worker.abandon()
                await self._close_sink(self.endpoint, 0.0)
                self._changed("lost")
                return
            self.worker = worker
            self._metrics.endpoint_active.labels(self.endpoint).set(1)
            task = asyncio.create_task(worker.run(), name=f"endpoint-{self.endpoint}")
            try:
                await self._wait(task, lease.closed.wait(), self._handover.wait())
                if lease.lost or not lease.held:
                    await self._abandoned(worker, task)
                else:
                    await self._release(worker, task, lease)
            finally:
                self.worker = None
                self._metrics.endpoint_active.labels(self.endpoint).set(0)
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        finally:
            if not positions_channel.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(positions_channel.close(), 5.0)

    async def _write(
        self,
        lease: Lease,
        channel: Any,
        epoch: int,
        positions: dict[str, StoredPosition],
    ) -> None:
        # Fencing for positions: only while the lease is held, on the lease's connection.
        if not lease.held:
            raise PositionStoreError("the endpoint's lease is not held: position not written")
        await write_positions(
            channel, self.endpoint, epoch, positions, confirm_within=self._publish_timeout
        )

    async def _abandoned(self, worker: EndpointWorker, task: asyncio.Task[None]) -> None:
        worker.abandon()
        dropped = await self._close_sink(self.endpoint, 0.0)
        self._changed("lost")
        self._log.error(
            "lease lost: the endpoint's session is stopped; its new owner resumes from the "
            "shared position",
            unconfirmed_dropped=dropped,
        )
        _, pending = await asyncio.wait([task], timeout=_ABANDON_GRACE)
        for t in pending:
            t.cancel()

    async def _release(
        self, worker: EndpointWorker, task: asyncio.Task[None], lease: Lease
    ) -> None:
        """Drain, confirm, store the final position, then release the lease."""
        handing_over = self._handover.is_set() and not self._stopping.is_set()
        self._handover.clear()
        loop = asyncio.get_running_loop()
        started = loop.time()
        worker.request_stop()
        _, pending = await asyncio.wait([task], timeout=self._shutdown_timeout)
        for t in pending:
            t.cancel()
        remaining = max(0.1, self._shutdown_timeout - (loop.time() - started))
        left = await self._close_sink(self.endpoint, remaining)
        self.unconfirmed_at_exit = left
        if lease.held:
            await worker.close()  # the final position, written while the lease is still held
        await lease.release()
        reason = "handed_over" if handing_over else "released"
        self._changed(reason)
        self._log.info("lease released", reason=reason, unconfirmed=left)

    def _changed(self, reason: str) -> None:
        self._lease_changes[reason].inc()


class Balancer:
    """Keeps this replica's share of the endpoints at ``ceil(M / N)``.

    N, the live replicas, is read from the broker: every replica is a consumer of every lease
    queue (the owner included), so a passive declare's consumer count is N. The smallest count
    over the lease queues is taken: it never over-counts, so the shares always cover every
    endpoint (no endpoint is left without a willing owner). A surplus is handed over
    gracefully, one coordinator at a time per round; a coordinator that receives a token
    beyond the share declines it (``may_own``).
    """

    def __init__(
        self,
        coordinators: dict[str, EndpointCoordinator],
        *,
        connection: Callable[[], Any],
        connected: asyncio.Event,
        interval: float = 1.0,
    ) -> None:
        self._coordinators = coordinators
        self._connection = connection
        self._connected = connected
        self._interval = interval
        self.replicas = 1

    @property
    def share(self) -> int:
        return -(-len(self._coordinators) // max(1, self.replicas))

    def owned(self) -> int:
        return sum(1 for c in self._coordinators.values() if c.owning and not c.handing_over)

    def may_own(self) -> bool:
        return self.owned() < self.share

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)  # a periodic check, not synchronisation
            if not self._connected.is_set():
                continue
            try:
                self.replicas = await self._count_replicas()
            except Exception as exc:  # the next round tries again
                log.debug("counting replicas failed", error=str(exc))
                continue
            surplus = self.owned() - self.share
            if surplus > 0:
                owning = [c for c in self._coordinators.values() if c.owning and not c.handing_over]
                for coordinator in sorted(owning, key=lambda c: c.endpoint)[:surplus]:
                    log.info(
                        "handing an endpoint over to balance the replicas",
                        endpoint=coordinator.endpoint,
                        replicas=self.replicas,
                        share=self.share,
                    )
                    coordinator.hand_over()

    async def _count_replicas(self) -> int:
        conn = underlay_connection(self._connection())
        channel = await conn.channel(publisher_confirms=False)
        try:
            counts = []
            for name in self._coordinators:
                ok = await channel.queue_declare(lease_queue(name), passive=True)
                counts.append(int(ok.consumer_count or 0))
            return max(1, min(counts, default=1))
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()
