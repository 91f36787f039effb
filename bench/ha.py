"""``bench/run.py --only ha`` (``make bench-ha``): the bridge's replicas under load and under
SIGKILL, with ``BRIDGE_COORDINATION=rabbitmq``.

1. **Scale-out.** E busy endpoints (one cometd-nodejs-server, one channel each, long-polling)
   bridged by one uncoordinated bridge (``file``, the reference), by 1 replica and by 3: once
   the replicas settled (every endpoint streamed by exactly one, shares within one), a burst
   of N messages spread over the endpoints; the raw consumer counts every seq per routing key.
   Printed: total msg/s end to end, missing, duplicates, and per replica the endpoints it
   owned, its CPU seconds during the burst and its peak RSS; the rounds rotate the order.
   Every replica shares the same cores, so on a small machine 3 replicas are not faster; the
   figure shows what the coordination and the extra processes cost.
2. **Failover.** 2 replicas, one replaying endpoint on the Salesforce-like server streaming at
   a steady rate; the active replica is SIGKILLed K times and restarted after each kill (as the
   standby). Per kill: the time from the kill to the first message of the new owner at the
   consumer (a newer ``cometd-lease-epoch`` header), and what the new owner sent twice (it
   replays from the last stored position). Over the whole stream: missing (0 on a replay
   endpoint) and duplicates. Printed: min / median / max of the failover times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from bench import procstat
from bench.consumer import RawConsumer
from bench.epoch_consumer import EpochConsumer
from bench.failover import EpochLog, Takeover
from bench.machine import describe, markdown_header
from bench.replicas import ReplicaGroup, balanced, delete_coordination_queues
from tests.e2e.harness import AMQP_URL
from tests.fixtures.servers import NodeBayeuxServer


__all__ = ["HaBench", "FailoverResult", "ScaleResult", "main"]

# Realistic long-poll timings, as the rest of the bench uses (a short timeout inflates CPU).
COMETD_OPTIONS = {"timeout": 20000, "interval": 0, "max_interval": 10000}
# Salesforce-like: a killed replica's session expires after its reconnect budget; retention
# holds far more than the positions can lag behind.
SALESFORCE_OPTIONS = {"timeout": 20000, "interval": 0, "max_interval": 10000, "retention": 100000}
JSON_OVERHEAD = len('{"seq":12345,"ts":1764000000000,"pad":""}')
SIZE = 200  # bytes of JSON per message as the CometD server publishes it
SETTLE_TIMEOUT = 60.0  # replicas starting together hand endpoints over until balanced
TAKEOVER_TIMEOUT = 30.0  # bound on kill → first message of the new owner
PUBLISH_CHUNK_S = 0.5  # the steady stream is published in requests of this many seconds


@dataclass
class ReplicaFigures:
    replica: str
    owned: int  # endpoints it streamed during the burst
    cpu_s: float  # CPU seconds from the burst's start to the last message consumed
    peak_rss_mb: float


@dataclass
class ScaleResult:
    replicas: int
    endpoints: int
    n: int
    settle_s: float  # first replica started → ownership balanced
    coordination: str = "rabbitmq"
    seconds: float | None = None
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    per_replica: list[ReplicaFigures] = field(default_factory=list)
    others_cpu: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.n / self.seconds if self.seconds else None

    @property
    def cpu_s(self) -> float:
        return sum(r.cpu_s for r in self.per_replica)


@dataclass
class FailoverResult:
    rate: float
    published: int = 0
    takeovers: list[Takeover] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    duplicates: int = 0
    note: str = ""

    @property
    def seconds(self) -> list[float]:
        return [t.seconds for t in self.takeovers if t.seconds is not None]

    def summary(self) -> tuple[float, float, float] | None:
        """(min, median, max) failover seconds."""
        s = self.seconds
        return (min(s), statistics.median(s), max(s)) if s else None


class HaBench:
    """The servers, the exchanges and the consumers both parts share; one run's temp dir."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="cometd-bench-ha-"))
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.exchange = f"bench.ha.{tag}"  # the scale-out bursts
        self.failover_exchange = f"bench.hafo.{tag}"
        self.control_exchange = f"bench.ha.{tag}.control"
        self.cometd = NodeBayeuxServer(kind="cometd", options=dict(COMETD_OPTIONS))
        # The retention buffer's file: the server reads it at start (empty: a fresh stream).
        sf_options: dict[str, Any] = {
            **SALESFORCE_OPTIONS,
            "buffer_file": str(self.tmp / "sf-buffer.json"),
        }
        self.salesforce = NodeBayeuxServer(
            kind="salesforce",
            options=sf_options,
        )
        self.consumer: RawConsumer | None = None
        self.epochs: EpochConsumer | None = None
        self._amqp: aio_pika.abc.AbstractConnection | None = None
        self._endpoints: list[str] = []  # every endpoint name used: its queues are deleted
        self._runs = 0
        self.failed = False
        self.broker_pid = procstat.find_pid("beam.smp")

    async def setup(self) -> None:
        await self.cometd.start()
        await self.salesforce.start()
        self._amqp = await aio_pika.connect(AMQP_URL)
        ch = await self._amqp.channel()
        for name in (self.exchange, self.failover_exchange):
            # Durable topic, as the bridge declares it; deleted at the end.
            ex = await ch.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await ch.declare_queue(name, arguments={"x-expires": 600_000})
            await queue.bind(ex, "#")
        self.consumer = RawConsumer(AMQP_URL, self.exchange)
        await self.consumer.start()
        self.epochs = EpochConsumer(AMQP_URL, self.failover_exchange)
        await self.epochs.start()

    async def teardown(self) -> None:
        if self.consumer is not None:
            await self.consumer.close()
        if self.epochs is not None:
            await self.epochs.close()
        if self._amqp is not None:
            for name in (self.exchange, self.failover_exchange):
                with contextlib.suppress(Exception):
                    ch = await self._amqp.channel()
                    await ch.queue_delete(name)
                    await ch.exchange_delete(name)
            with contextlib.suppress(Exception):
                ch = await self._amqp.channel()
                await ch.exchange_delete(self.control_exchange)
            await self._amqp.close()
        if self._endpoints:
            await delete_coordination_queues(AMQP_URL, self._endpoints)
        await self.cometd.stop()
        await self.salesforce.stop()
        if self.failed:  # the replicas' logs are kept only when something went wrong
            print(f"logs of the replicas: {self.tmp}", flush=True)
        else:
            await asyncio.to_thread(shutil.rmtree, self.tmp, True)

    def _env(self, endpoints: dict[str, dict[str, Any]]) -> dict[str, str]:
        return {
            "BRIDGE_ENDPOINTS": json.dumps(endpoints),
            "BRIDGE_AMQP_URL": AMQP_URL,
            "BRIDGE_LOG_LEVEL": "INFO",
            "BRIDGE_CONTROL_EXCHANGE": self.control_exchange,
        }

    def _names(self, prefix: str, count: int) -> list[str]:
        """Fresh endpoint names: their lease and positions queues are this run's alone."""
        self._runs += 1
        names = [f"{prefix}{self.tag}r{self._runs}e{i}" for i in range(count)]
        self._endpoints += names
        return names

    def _others_cpu(self, server: NodeBayeuxServer) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.broker_pid is not None:
            with contextlib.suppress(OSError):
                out["broker"] = procstat.cpu_seconds(self.broker_pid)
        if server._process is not None:
            out["server"] = procstat.cpu_seconds(server._process.pid)
        out["consumer"] = procstat.cpu_seconds(os.getpid())
        return out

    # -- 1. scale-out ---------------------------------------------------------------------

    async def scale_out(
        self, replicas: int, endpoints: int, n: int, coordination: str = "rabbitmq"
    ) -> ScaleResult:
        """``endpoints`` busy endpoints bridged by ``replicas`` replicas: a burst of ``n``
        messages spread over them, once the replicas settled (``coordination="file"``: one
        uncoordinated bridge, the reference)."""
        assert self.consumer is not None
        names = self._names("hs", endpoints)
        channels = {name: f"/bench/{name}" for name in names}
        config = {"connection_types": ["long-polling"], "exchange": self.exchange}
        group = ReplicaGroup(
            self.tmp,
            self._env(
                {
                    name: {"url": self.cometd.url, "channels": [channel], **config}
                    for name, channel in channels.items()
                }
            ),
            coordination,
        )
        per = n // endpoints
        result = ScaleResult(replicas, endpoints, per * endpoints, 0.0, coordination)
        try:
            started = time.monotonic()
            async with asyncio.TaskGroup() as starting:  # one failing stops the others
                for i in range(replicas):
                    starting.create_task(group.start(f"r{i + 1}"))
            owned = await group.wait_owned(lambda o: balanced(o, names), SETTLE_TIMEOUT)
            result.settle_s = time.monotonic() - started
            stats = await self.cometd.stats()
            subscribed = {c: stats["subscriptions"].get(c, 0) for c in channels.values()}
            if set(subscribed.values()) != {1}:
                result.note = f"subscriptions per channel at the server: {subscribed}"

            self.consumer.expect({c[1:].replace("/", "."): per for c in channels.values()})
            pids = {r: group.pid(r) for r in owned}
            cpu0 = {r: procstat.cpu_seconds(pid) for r, pid in pids.items()}
            others0 = self._others_cpu(self.cometd)
            t0 = time.time()
            pad = SIZE - JSON_OVERHEAD
            await asyncio.gather(
                *(self.cometd.publish(c, per, size=pad, wait=False) for c in channels.values())
            )
            if not await self.consumer.wait_complete(30 + n / 300):
                result.note = "incomplete within the time limit"
            result.seconds = self.consumer.counter.last_ms / 1000.0 - t0
            others = self._others_cpu(self.cometd)
            result.others_cpu = {k: v - others0[k] for k, v in others.items() if k in others0}
            for replica, pid in pids.items():
                result.per_replica.append(
                    ReplicaFigures(
                        replica,
                        len(owned[replica]),
                        procstat.cpu_seconds(pid) - cpu0[replica],
                        procstat.peak_rss_mb(pid),
                    )
                )
            after = await group.owned()
            if after != owned:
                result.note = "ownership changed during the burst"
        except Exception as exc:
            result.note = f"failed: {exc}"[:300]
        finally:
            await group.stop_all()
        r = self.consumer.counter.report()
        result.missing, result.duplicates, result.out_of_order = (
            r.missing,
            r.duplicates,
            r.out_of_order,
        )
        self.failed |= bool(result.note)
        return result

    # -- 2. failover ----------------------------------------------------------------------

    async def failover(self, kills: int, rate: float, steady_s: float) -> FailoverResult:
        """2 replicas, one replaying endpoint at ``rate`` msg/s; the active replica is
        SIGKILLed ``kills`` times, each after it streamed ``steady_s`` seconds' worth."""
        consumer = self.epochs
        assert consumer is not None
        consumer.reset()
        (name,) = self._names("hf", 1)
        channel = f"/event/{name}__e"
        endpoint = {
            "url": self.salesforce.url,
            "channels": [channel],
            "connection_types": "long-polling",
            "exchange": self.failover_exchange,
            "replay": "stored",
            "replay_fallback": "all",
            "gap_policy": "earliest",
        }
        group = ReplicaGroup(self.tmp, self._env({name: endpoint}))
        result = FailoverResult(rate)
        stop = asyncio.Event()
        publisher: asyncio.Task[int] | None = None
        try:
            await group.start("a")
            await group.wait_role("a", name, "active", SETTLE_TIMEOUT)
            await group.start("b")
            await group.wait_role("b", name, "standby", SETTLE_TIMEOUT)
            publisher = asyncio.create_task(self._publish_steadily(channel, rate, stop))
            active, standby = "a", "b"
            for i in range(kills):
                # The owner streams a while beyond what it replayed (its epoch is the newest
                # one that arrived).
                await _check(publisher)
                if not await consumer.wait_for(
                    lambda log: (
                        log.latest_epoch is not None
                        and log.fresh(log.latest_epoch) >= rate * steady_s
                    ),
                    within=TAKEOVER_TIMEOUT + steady_s * 2,
                ):
                    raise TimeoutError(f"kill {i + 1}: the owner did not stream")
                epoch = consumer.log.latest_epoch
                assert epoch is not None
                await group.wait_role(active, name, "active", within=1.0)  # the one to kill
                consumer.log.kill(group.kill(active), epoch)
                if not await consumer.wait_for(_newer_than(epoch), TAKEOVER_TIMEOUT):
                    raise TimeoutError(f"kill {i + 1}: no message of a new owner")
                # Always a standby for the next kill: the killed replica comes back.
                await group.start(active)
                await group.wait_role(active, name, "standby", SETTLE_TIMEOUT)
                active, standby = standby, active
            stop.set()
            result.published = await publisher
            await consumer.wait_for(
                lambda log: log.distinct >= result.published, 30 + result.published / rate
            )
        except Exception as exc:
            result.note = f"failed: {exc}"[:300]
        finally:
            stop.set()
            if publisher is not None and not publisher.done():
                publisher.cancel()
            if publisher is not None:
                await asyncio.gather(publisher, return_exceptions=True)
            await group.stop_all()
        log = consumer.log
        result.takeovers = log.takeovers()
        result.missing = log.missing(result.published)
        result.duplicates = log.duplicates
        self.failed |= bool(result.note) or bool(result.missing)
        return result

    async def _publish_steadily(self, channel: str, rate: float, stop: asyncio.Event) -> int:
        """Publish at ``rate`` msg/s until ``stop`` (bounded: an hour's worth at most); returns
        how many were published (seqs 1..that)."""
        chunk = max(1, round(rate * PUBLISH_CHUNK_S))
        limit = round(rate * 3600)
        published = 0
        pad = SIZE - JSON_OVERHEAD
        while not stop.is_set() and published < limit:
            reply = await self.salesforce.publish(channel, chunk, size=pad, rate=rate, wait=True)
            published += int(reply["published"])
        return published


def _newer_than(epoch: int) -> Callable[[EpochLog], bool]:
    """A message of an epoch above ``epoch`` arrived (the killed owner's successor)."""
    return lambda log: log.first_after(epoch) is not None


async def _check(task: asyncio.Task[int]) -> None:
    """Raise a failed background task's error now (rather than as a later timeout)."""
    if task.done():
        await task


# -- output ----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def scale_lines(r: ScaleResult) -> list[str]:
    head = (
        f"  {r.endpoints} busy endpoints x {r.replicas} replica(s), {r.coordination}:"
        f" {_fmt(r.rate, ',.0f')} msg/s"
        f" ({r.n:,} messages), missing {r.missing}, duplicates {r.duplicates},"
        f" out of order {r.out_of_order}; settled in {r.settle_s:.1f} s"
        + (f"  NOTE {r.note}" if r.note else "")
    )
    rows = [
        f"    {p.replica:<4} owned {p.owned:>3}  CPU {p.cpu_s:6.2f} s"
        f"  peak RSS {p.peak_rss_mb:6.1f} MB"
        for p in r.per_replica
    ]
    return [head, *rows]


def failover_lines(r: FailoverResult) -> list[str]:
    lines = [
        f"  failover, 2 replicas, 1 replay endpoint at {r.rate:.0f} msg/s:"
        f" {len(r.takeovers)} SIGKILLs of the active, {r.published:,} published"
        + (f"  NOTE {r.note}" if r.note else "")
    ]
    for i, t in enumerate(r.takeovers, 1):
        lines.append(
            f"    kill {i:>2}: epoch {t.old_epoch} -> {t.new_epoch}, first message of the new"
            f" owner after {_fmt(t.seconds, '.3f')} s, {t.duplicates} sent again"
        )
    s = r.summary()
    if s is not None:
        lines.append(f"    failover s: min {s[0]:.3f}  median {s[1]:.3f}  max {s[2]:.3f}")
    lines.append(f"    missing {len(r.missing)}, duplicates {r.duplicates}")
    return lines


def markdown(
    scale: list[ScaleResult],
    failover: FailoverResult | None,
    machine: dict[str, str],
    elapsed: float,
) -> str:
    out = markdown_header(machine, elapsed)
    out += ["### Busy endpoints: one bridge, 1 replica, 3 replicas", ""]
    out += [
        "| endpoints | replicas | coordination | messages | msg/s | missing | dup | settled s "
        "| per replica: owned / CPU s / peak RSS MB | broker CPU s | server CPU s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in scale:
        per = "; ".join(
            f"{p.replica}: {p.owned} / {p.cpu_s:.2f} / {p.peak_rss_mb:.1f}" for p in r.per_replica
        )
        out.append(
            f"| {r.endpoints} | {r.replicas} | {r.coordination} | {r.n:,} "
            f"| {_fmt(r.rate, ',.0f')} | {r.missing} | {r.duplicates} | {r.settle_s:.1f} | {per} "
            f"| {_fmt(r.others_cpu.get('broker'), '.2f')} "
            f"| {_fmt(r.others_cpu.get('server'), '.2f')} |" + (f" {r.note}" if r.note else "")
        )
    if failover is not None:
        fo = failover
        out += ["", f"### Failover: SIGKILL of the active replica, {fo.rate:.0f} msg/s", ""]
        out += ["| kill | epoch | failover s | sent again |", "|---:|---|---:|---:|"]
        for i, t in enumerate(fo.takeovers, 1):
            out.append(
                f"| {i} | {t.old_epoch} → {t.new_epoch} | {_fmt(t.seconds, '.3f')} "
                f"| {t.duplicates} |"
            )
        s = fo.summary()
        out += [""]
        if s is not None:
            out.append(f"Failover min / median / max: {s[0]:.3f} / {s[1]:.3f} / {s[2]:.3f} s.")
        out.append(
            f"{fo.published:,} published, {len(fo.missing)} missing, {fo.duplicates} duplicates."
            + (f" {fo.note}" if fo.note else "")
        )
    return "\n".join(out) + "\n"


# -- the plan --------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> str:
    started = time.monotonic()
    bench = HaBench()
    await bench.setup()
    try:
        assert bench.consumer is not None
        machine = describe(bench.consumer.server_properties)
        print("Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
        scale = []
        # Rounds with the order rotating, so the machine's drifts (other work on the same
        # cores) spread over every setup; the uncoordinated bridge is the reference.
        setups = [(1, "file"), (1, "rabbitmq"), (3, "rabbitmq")]
        for rnd in range(args.ha_rounds):
            for replicas, coordination in setups[rnd % 3 :] + setups[: rnd % 3]:
                r = await bench.scale_out(replicas, args.ha_endpoints, args.n, coordination)
                scale.append(r)
                print("\n".join(scale_lines(r)), flush=True)
        fo = await bench.failover(args.ha_kills, args.ha_rate, args.ha_steady)
        print("\n".join(failover_lines(fo)), flush=True)
        text = markdown(scale, fo, machine, time.monotonic() - started)
    finally:
        await bench.teardown()
    print()
    print(text)
    return text
