"""The chaos run: a seeded random schedule of faults while two bridges stream, and a checker
that counts every sequence number that reached RabbitMQ.

Two targets, each a bridge process with one endpoint, its CometD server behind a fault proxy
and its AMQP connection behind another (so a broker stall is modelled on this bridge's
connection only; the shared broker's global state is never touched):

- ``replay``: the Salesforce-like server with ``replay: stored``;
- ``ack``: the same server with the acknowledgement extension and no replay.

Fault kinds: ``cut`` (a response carrying events cut mid-body, then both sockets reset),
``reset`` (RST on every CometD connection), ``stall`` (the CometD link blackholed for up to
3 s), ``throttle`` (the CometD link at 20 KB/s), ``amqp_kill`` (the bridge's own named
connection closed by the broker, through ``rabbitmqctl``), ``amqp_reset`` (RST on the bridge's
AMQP connection), ``amqp_stall`` (the bridge's AMQP connection blackholed for up to 4 s) and,
on the replay target only (on a server without replay each loses what the server forgot, by
design), ``session_drop``, ``server_restart`` and ``sigkill`` (bridge SIGKILLed and started
again).

Run ``python -m tests.faults.chaos --seed 7 --duration 180`` (``make chaos``). It prints the
seed, then a table per target and fault kind: injected, hit (the fault landed on live
traffic), recovered (an event published after the fault healed reached RabbitMQ), missing and
duplicates (attributed to the fault in progress when the event was published / arrived twice),
and the longest stall (the longest time without any delivery reaching RabbitMQ, from a fault's
start until the next fault). Exits 1 on any missing event or any fault not recovered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika.abc

from tests.e2e.harness import AMQP_URL, BridgeProcess, QueueCollector
from tests.faults.proxy import FaultProxy
from tests.fixtures.rabbitmq import unique_name
from tests.integration.noloss.conftest import SALESFORCE_DEFAULTS, SalesforceServer


CHANNEL = "/event/Order__e"
REPLAY_KINDS = (
    "cut",
    "reset",
    "stall",
    "throttle",
    "session_drop",
    "server_restart",
    "amqp_kill",
    "amqp_reset",
    "amqp_stall",
    "sigkill",
)
ACK_KINDS = ("cut", "reset", "stall", "throttle", "amqp_kill", "amqp_reset", "amqp_stall")
DRAIN_WITHIN = 120.0  # after the schedule, every published event must arrive within this


@dataclass
class Fault:
    target: str
    kind: str
    start: float  # wall clock, as the server's event ``ts`` (ms / 1000)
    healed: float = 0.0
    hit: bool = False
    detail: str = ""


class TimedCollector(QueueCollector):
    """A :class:`QueueCollector` that also records when each delivery arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[float] = []

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await super()._on_message(message)
        self.arrived.append(time.time())  # same index as the delivery just appended


@dataclass
class Target:
    """One bridge, its server, its two proxies, its queue, and what was published."""

    name: str
    server: SalesforceServer
    cometd_proxy: FaultProxy
    amqp_proxy: FaultProxy
    bridge: BridgeProcess
    collector: TimedCollector
    kinds: tuple[str, ...]
    published: list[tuple[int, int, float, float]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return max((last for _, last, _, _ in self.published), default=0)

    def publish_time(self, seq: int) -> float:
        for first, last, start, end in self.published:
            if first <= seq <= last:
                return start + (end - start) * (seq - first) / max(1, last - first)
        return 0.0

    def connection_name(self) -> str:
        assert self.bridge.proc is not None
        return f"cometd-bridge/{socket.gethostname()}/{self.bridge.proc.pid}"


# -- the workload ----------------------------------------------------------------------------


async def stream(target: Target, rate: int, until: float) -> None:
    """Publish at ``rate``/s in half-second chunks until ``until``; survives server restarts."""
    chunk = max(1, rate // 2)
    while time.time() < until:
        start = time.time()
        try:
            result = await target.server.publish(CHANNEL, chunk, rate=rate)
        except Exception:  # the server is restarting: what it published is in its buffer file
            await asyncio.sleep(0.2)
            continue
        target.published.append(
            (int(result["first_seq"]), int(result["last_seq"]), start, time.time())
        )


async def publish_tail(target: Target, count: int) -> None:
    """A last batch after every fault healed, so each fault has newer events to recover to."""
    start = time.time()
    result = await target.server.publish(CHANNEL, count)
    target.published.append((int(result["first_seq"]), int(result["last_seq"]), start, time.time()))


# -- the faults ------------------------------------------------------------------------------


async def inject(target: Target, kind: str, rng: random.Random) -> Fault:
    fault = Fault(target.name, kind, time.time())
    cometd, amqp = target.cometd_proxy, target.amqp_proxy
    if kind == "cut":
        try:
            report = await cometd.cut_next_response(within=10.0)
            fault.hit = bool(report.seqs)
            fault.detail = f"{len(report.seqs) + len(report.trailing_seqs)} events cut"
        except AssertionError as exc:
            fault.detail = str(exc)[:80]
    elif kind == "reset":
        await cometd.wait_connected()
        fault.hit = cometd.reset_all() > 0
    elif kind == "stall":
        fault.hit = await cometd.wait_connected()
        cometd.stall()
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        cometd.resume()
    elif kind == "throttle":
        fault.hit = await cometd.wait_connected()
        cometd.set_throttle(20_000)
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        cometd.set_throttle(None)
    elif kind == "session_drop":
        fault.hit = await target.server.drop_sessions() > 0
    elif kind == "server_restart":
        await target.server.restart()
        fault.hit = True
    elif kind == "amqp_kill":
        await amqp.wait_connected()
        closed = await asyncio.to_thread(close_by_name, target.connection_name())
        if closed is None:
            fault.kind = "amqp_reset"  # no usable broker CLI: kill it from the network side
            fault.hit = amqp.reset_all() > 0
        else:
            fault.hit = closed > 0
    elif kind == "amqp_reset":
        await amqp.wait_connected()
        fault.hit = amqp.reset_all() > 0
    elif kind == "amqp_stall":
        # Right after an AMQP kill or reset the bridge may still be reconnecting: a stall of
        # a link with no connection on it is no fault at all.
        fault.hit = await amqp.wait_connected()
        amqp.stall()
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        amqp.resume()
    elif kind == "sigkill":
        target.bridge.signal(signal.SIGKILL)
        await target.bridge.wait_exit()
        target.bridge.start()
        await target.bridge.wait_ready(within=60.0)
        fault.hit = True
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    fault.healed = time.time()
    return fault


def close_by_name(connection_name: str) -> int | None:
    """Close (as an operator would) the broker connections with that client name, and only
    those; None when ``rabbitmqctl`` is missing or refuses."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return None
    listed = subprocess.run(
        [exe, "-q", "list_connections", "pid", "client_properties", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if listed.returncode != 0:
        return None
    wanted = f'{{"connection_name","{connection_name}"}}'
    pids = [
        line.split("\t", 1)[0]
        for line in listed.stdout.splitlines()
        if "\t" in line and wanted in line.split("\t", 1)[1]
    ]
    for pid in pids:
        subprocess.run(
            [exe, "-q", "close_connection", pid, "chaos run"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    return len(pids)


async def schedule(target: Target, rng: random.Random, until: float, gap: float) -> None:
    """Inject faults one after another, a random pause apart, until ``until``: rounds of every
    kind in a shuffled order, so a long enough run injects each kind."""
    order: list[str] = []
    while True:
        await asyncio.sleep(rng.uniform(gap / 2, gap * 1.5))
        if time.time() >= until:
            return
        if not order:
            order = rng.sample(target.kinds, len(target.kinds))
        kind = order.pop()
        fault = await inject(target, kind, rng)
        target.faults.append(fault)
        print(
            f"  {fault.start - T0:7.1f}s {target.name:6} {fault.kind:14} "
            f"{'hit' if fault.hit else 'MISSED'} {fault.detail}",
            flush=True,
        )


T0 = time.time()


# -- the checker -----------------------------------------------------------------------------


def seq_of(body: Any) -> int:
    return int(body["payload"]["seq"])


def event_ts(body: Any) -> float:
    return float(body["payload"]["ts"]) / 1000.0


@dataclass
class Row:
    injected: int = 0
    hit: int = 0
    recovered: int = 0
    missing: int = 0
    duplicates: int = 0
    longest_stall: float = 0.0


def check(target: Target) -> tuple[dict[str, Row], list[int]]:
    """Per fault kind: the counts of the table. Also returns the missing seqs."""
    rows: dict[str, Row] = {}
    faults = sorted(target.faults, key=lambda f: f.start)

    def blame(t: float) -> str:
        """The fault in progress (or just healed: its recovery) at time ``t``."""
        current = "none"
        for fault in faults:
            if fault.start <= t:
                current = fault.kind
        return current

    deliveries = list(zip(target.collector.deliveries, target.collector.arrived, strict=False))
    seen: dict[int, int] = {}
    for delivery, arrived in deliveries:
        seq = seq_of(delivery.body)
        seen[seq] = seen.get(seq, 0) + 1
        if seen[seq] > 1:
            rows.setdefault(blame(arrived), Row()).duplicates += 1
    missing = sorted(set(range(1, target.last_seq + 1)) - set(seen))
    for seq in missing:
        rows.setdefault(blame(target.publish_time(seq)), Row()).missing += 1
    by_ts = sorted((event_ts(d.body), arrived) for d, arrived in deliveries)
    arrivals = sorted(target.collector.arrived)
    for n, fault in enumerate(faults):
        row = rows.setdefault(fault.kind, Row())
        row.injected += 1
        row.hit += fault.hit
        if any(ts >= fault.healed for ts, _ in by_ts):
            row.recovered += 1
        # A stall: the longest time without any delivery reaching RabbitMQ, from the fault's
        # start until the next fault (a backlog being worked off is progress, not a stall).
        end = faults[n + 1].start if n + 1 < len(faults) else max(arrivals, default=fault.start)
        stall = 0.0
        previous = fault.start
        for arrived in arrivals:
            if arrived < fault.start:
                continue
            stall = max(stall, arrived - previous)
            previous = arrived
            if arrived >= end:
                break
        row.longest_stall = max(row.longest_stall, stall)
    return rows, missing


def table(results: dict[str, dict[str, Row]]) -> str:
    lines = [
        "| server | fault | injected | hit | recovered | missing | duplicates "
        "| longest stall (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for target, rows in results.items():
        for kind in sorted(rows, key=lambda k: (k == "none", k)):
            r = rows[kind]
            lines.append(
                f"| {target} | {kind} | {r.injected} | {r.hit} | {r.recovered} | {r.missing} "
                f"| {r.duplicates} | {r.longest_stall:.2f} |"
            )
    return "\n".join(lines)


# -- setup and the run -----------------------------------------------------------------------


def amqp_host_port() -> tuple[str, int]:
    hostport = AMQP_URL.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    return host, int(port or 5672)


async def start_target(name: str, workdir: Path, *, ack: bool) -> Target:
    options: dict[str, Any] = {
        **SALESFORCE_DEFAULTS,
        "buffer_file": str(workdir / f"{name}-buffer.json"),
        "retention": 200_000,
    }
    if ack:
        # The ack guarantee holds while the session lives: a budget longer than any stall here.
        options.update(ack=1, replay=0, max_interval=15_000)
    server = SalesforceServer(kind="salesforce", options=options, connection_type="long-polling")
    await server.start()
    cometd_proxy = await FaultProxy("127.0.0.1", server.port).start()
    amqp_proxy = await FaultProxy(*amqp_host_port(), framing="raw").start()
    exchange = unique_name(f"chaos-{name}")
    collector = TimedCollector()
    await collector.start(exchange)
    endpoint: dict[str, Any] = {
        "url": cometd_proxy.url_for(server.url),
        "channels": [CHANNEL],
        "connection_types": "long-polling",
        "exchange": exchange,
    }
    if ack:
        endpoint.update(replay="off", ack="on")
    else:
        endpoint.update(replay="stored", replay_fallback="all", gap_policy="earliest")
    user_pass = AMQP_URL.split("//", 1)[1].split("@", 1)[0] if "@" in AMQP_URL else "guest:guest"
    env = {
        "BRIDGE_ENDPOINTS": json.dumps({name: endpoint}),
        "BRIDGE_STATE_DIR": str(workdir / f"{name}-state"),
        "BRIDGE_SHUTDOWN_TIMEOUT": "10",
        "BRIDGE_LOG_LEVEL": "INFO",
        "BRIDGE_POSITION_FLUSH_INTERVAL": "0.2",
        "BRIDGE_AMQP_URL": f"amqp://{user_pass}@127.0.0.1:{amqp_proxy.port}/",
    }
    bridge = BridgeProcess(env=env, log_path=workdir / f"{name}-bridge.log")
    bridge.start()
    await bridge.wait_ready(within=60.0)
    kinds = ACK_KINDS if ack else REPLAY_KINDS
    return Target(name, server, cometd_proxy, amqp_proxy, bridge, collector, kinds)


async def stop_target(target: Target) -> None:
    target.bridge.stop()
    for proxy in (target.cometd_proxy, target.amqp_proxy):
        await proxy.close()
    await target.server.stop()
    await target.collector.close()


async def drain(target: Target) -> None:
    """Wait (bounded) until every published seq reached the queue."""
    wanted = set(range(1, target.last_seq + 1))
    deadline = time.monotonic() + DRAIN_WITHIN
    while time.monotonic() < deadline:
        if wanted <= {seq_of(d.body) for d in target.collector.deliveries}:
            return
        await target.collector.wait_for(len(target.collector.deliveries) + 1, 1.0, quiet=True)


@dataclass
class ChaosResult:
    seed: int
    results: dict[str, dict[str, Row]]
    missing: dict[str, list[int]]
    published: dict[str, int]

    @property
    def ok(self) -> bool:
        return not any(self.missing.values()) and all(
            row.recovered == row.injected for rows in self.results.values() for row in rows.values()
        )


async def run_chaos(
    seed: int,
    duration: float,
    *,
    rate: int = 200,
    gap: float = 3.0,
    workdir: Path | None = None,
    log: Callable[[str], None] = print,
) -> ChaosResult:
    global T0
    rng = random.Random(seed)
    log(f"chaos run: seed {seed}, {duration:.0f} s, {rate} events/s per server")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        targets: list[Target] = []
        try:
            for name, ack in (("replay", False), ("ack", True)):
                targets.append(await start_target(name, workdir, ack=ack))
            T0 = time.time()
            until = T0 + duration
            seeds = [rng.randrange(2**32) for _ in targets]
            jobs: list[Awaitable[None]] = []
            for target, target_seed in zip(targets, seeds, strict=True):
                jobs.append(stream(target, rate, until))
                jobs.append(schedule(target, random.Random(target_seed), until, gap))
            await asyncio.gather(*jobs)
            for target in targets:
                target.cometd_proxy.heal()
                target.amqp_proxy.heal()
                await publish_tail(target, rate)
            await asyncio.gather(*(drain(target) for target in targets))
            results: dict[str, dict[str, Row]] = {}
            missing: dict[str, list[int]] = {}
            for target in targets:
                results[target.name], missing[target.name] = check(target)
            result = ChaosResult(seed, results, missing, {t.name: t.last_seq for t in targets})
            log(table(results))
            for target in targets:
                log(
                    f"{target.name}: {target.last_seq} published, "
                    f"{len(missing[target.name])} missing {missing[target.name][:10]}"
                )
            if not result.ok:
                for target in targets:
                    log(f"--- {target.name} bridge log tail ---\n{target.bridge.log_tail(30)}")
            return result
        finally:
            for target in targets:
                with contextlib.suppress(Exception):
                    await stop_target(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of faults")
    parser.add_argument("--rate", type=int, default=200, help="events/s per server")
    parser.add_argument("--gap", type=float, default=3.0, help="mean seconds between faults")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    result = asyncio.run(run_chaos(seed, args.duration, rate=args.rate, gap=args.gap))
    print(f"seed {seed}: {'OK' if result.ok else 'FAILED'}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
