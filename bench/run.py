"""`make bench`: the bridge end to end against a naive baseline, the source and sink ceilings and
a Node reference bridge, in one interleaved run on this machine.

Usage: .venv/bin/python bench/run.py [--quick] [--n N] [--uvloop] [--only memory|ha]
[--markdown PATH]

``--only memory`` runs just the memory part: the bridge alone over the 2 KB burst on both
servers (peak RSS, missing, duplicates), for a quick check of the client's memory bound.
``--only ha`` (``make bench-ha``) runs the replicas' part instead (bench/ha.py): busy endpoints
over 1 and 3 replicas, and the failover time over repeated SIGKILLs of the active replica.

Variants: ``bridge`` (the real daemon, ``python -m bridge run``), ``baseline`` (our client, each
publish awaited with confirms), ``receive-only`` (source ceiling), ``publish-only`` (sink
ceiling: aio-pika pipelined confirms), ``publish-only-bridge`` (the bridge's own publisher
alone), ``node`` (cometd + amqplib, bench/node_bridge.mjs), ``bridge+uvloop`` (``--uvloop``).

Every measured program runs as its own process, so its peak RSS (VmHWM) and CPU seconds
(/proc/<pid>/stat, counted from "ready" to "last message consumed") are its own. Real servers
(cometd-nodejs-server long-polling, faye WebSocket) publish ``{seq, ts, pad}`` messages; one
raw AMQP consumer (bench/consumer.py) counts every seq per routing key exactly (missing,
duplicates, out of order) and measures the added latency (server ``ts`` → consumer).
See bench/RESULTS.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

import aio_pika  # noqa: E402

from bench import procstat  # noqa: E402
from bench.consumer import RawConsumer  # noqa: E402
from bench.counting import percentile  # noqa: E402
from bench.machine import describe, markdown_header  # noqa: E402
from tests.e2e.harness import BridgeProcess  # noqa: E402
from tests.fixtures.servers import NodeBayeuxServer, ServerKind  # noqa: E402


AMQP_URL = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
BENCH_DIR = Path(__file__).resolve().parent
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
# Realistic long-poll timings for the idle figures (a 2 s test timeout would inflate idle CPU).
SERVER_OPTIONS: dict[str, dict[str, int]] = {
    "cometd": {"timeout": 20000, "interval": 0, "max_interval": 10000},
    "faye": {"timeout": 20000, "interval": 0},
}
TRANSPORT = {"cometd": "long-polling", "faye": "websocket"}
SERVER_LABEL = {"cometd": "cometd-nodejs LP", "faye": "faye WS"}
# `python -m bridge run` with uvloop's event loop policy (uvloop is not a project dependency).
UVLOOP_ARGV = [
    sys.executable,
    "-c",
    "import asyncio, runpy, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy());"
    " sys.argv = ['bridge', 'run']; runpy.run_module('bridge', run_name='__main__')",
]
JSON_OVERHEAD = len('{"seq":12345,"ts":1764000000000,"pad":""}')


@dataclass
class BridgeCommand(BridgeProcess):
    """``BridgeProcess`` with the command line open (e.g. under a profiler)."""

    argv: list[str] = field(default_factory=lambda: [sys.executable, "-m", "bridge", "run"])
    clear_env: bool = True  # only what the bench gives: no BRIDGE_* from the shell

    def command(self) -> list[str]:
        return self.argv


@dataclass
class Result:
    scenario: str
    server: str
    variant: str
    n: int
    seconds: float | None = None
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    note: str = ""
    #: CPU seconds the other parties spent meanwhile: broker, CometD server, bench consumer.
    others_cpu: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def set_latencies(self, latencies: list[float]) -> None:
        self.latencies_ms = latencies
        self.p50_ms, self.p99_ms = percentile(latencies, 0.5), percentile(latencies, 0.99)

    @property
    def rate(self) -> float | None:
        return self.n / self.seconds if self.seconds else None

    @property
    def cpu_per_10k(self) -> float | None:
        return self.cpu_s / self.n * 10_000 if self.cpu_s is not None and self.n else None


@dataclass
class Measured:
    """A running measured process: its pid, how to stop it, and its stdout lines."""

    pid: int
    stop: Callable[[], Awaitable[None]]
    lines: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    stdin: asyncio.StreamWriter | None = None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="cometd-bench-"))
        self.exchange = f"bench.{uuid.uuid4().hex[:8]}"
        self.servers: dict[str, NodeBayeuxServer] = {}
        self.consumer: RawConsumer | None = None
        self.results: list[Result] = []
        self.scale: list[dict[str, Any]] = []
        self._runs = 0
        self._amqp: aio_pika.abc.AbstractConnection | None = None
        self.bridge_argv = [sys.executable, "-m", "bridge", "run"]
        #: Extra endpoint settings for the bridge (e.g. ``max_inflight`` in a window sweep).
        self.endpoint_settings: dict[str, Any] = {}
        self.broker_pid = procstat.find_pid("beam.smp")  # a local broker: its CPU is reported
        #: Called with the measured pid just before the stream starts and once it is consumed
        #: (bench/profile_bridge.py switches its profiler on and off with them).
        self.around_stream: (
            tuple[Callable[[int], None], Callable[[int], Awaitable[None]]] | None
        ) = None

    # -- environment ----------------------------------------------------------------------

    async def setup(self) -> None:
        kinds: tuple[ServerKind, ...] = ("cometd", "faye")
        for kind in kinds:
            server = NodeBayeuxServer(kind=kind, options=dict(SERVER_OPTIONS[kind]))
            await server.start()
            self.servers[kind] = server
        self._amqp = await aio_pika.connect(AMQP_URL)
        ch = await self._amqp.channel()
        # Durable like the bridge declares it; deleted at the end.
        ex = await ch.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await ch.declare_queue(self.exchange, arguments={"x-expires": 600_000})
        await queue.bind(ex, "#")
        self.consumer = RawConsumer(AMQP_URL, self.exchange)
        await self.consumer.start()

    async def teardown(self) -> None:
        if self.consumer is not None:
            await self.consumer.close()
        if self._amqp is not None:
            with contextlib.suppress(Exception):
                ch = await self._amqp.channel()
                await ch.queue_delete(self.exchange)
                await ch.exchange_delete(self.exchange)
            await self._amqp.close()
        for server in self.servers.values():
            await server.stop()
        # Logs of the measured programs are kept only when something went wrong.
        if any(r.note for r in self.results):
            print(f"logs of the measured programs: {self.tmp}", flush=True)
        else:
            await asyncio.to_thread(shutil.rmtree, self.tmp, True)

    def _others_cpu(self, kind: str) -> dict[str, float]:
        """CPU seconds so far of the broker, the CometD server in use and this process."""
        out = {"consumer": procstat.cpu_seconds(os.getpid())}
        if self.broker_pid is not None:
            with contextlib.suppress(OSError):
                out["broker"] = procstat.cpu_seconds(self.broker_pid)
        server = self.servers.get(kind)
        if server is not None and server._process is not None:
            out["server"] = procstat.cpu_seconds(server._process.pid)
        return out

    def channel(self) -> str:
        self._runs += 1
        return f"/bench/r{self._runs}"

    # -- launching the measured programs --------------------------------------------------

    async def _bridge(
        self, endpoints: dict[str, dict[str, Any]], argv: list[str] | None = None
    ) -> Measured:
        env = {
            "BRIDGE_ENDPOINTS": json.dumps(endpoints),
            "BRIDGE_AMQP_URL": AMQP_URL,
            "BRIDGE_STATE_DIR": str(self.tmp / "state"),
            "BRIDGE_LOG_LEVEL": "INFO",
        }
        proc = BridgeCommand(
            env=env, log_path=self.tmp / "bridge.log", argv=argv or self.bridge_argv
        )
        proc.start()
        try:
            await proc.wait_ready(READY_TIMEOUT)
        except BaseException:
            proc.stop()
            raise
        assert proc.proc is not None

        async def stop() -> None:
            proc.signal(signal.SIGTERM)
            try:
                await proc.wait_exit(STOP_TIMEOUT)
            finally:
                proc.stop()

        return Measured(proc.proc.pid, stop)

    def _endpoint(self, kind: str, channels: list[str]) -> dict[str, Any]:
        return {
            "url": self.servers[kind].url,
            "channels": channels,
            "connection_types": [TRANSPORT[kind]],
            "exchange": self.exchange,
            **self.endpoint_settings,
        }

    async def _process(self, argv: list[str], cwd: Path, name: str) -> Measured:
        log = (self.tmp / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            limit=1 << 20,
        )
        log.close()
        measured = Measured(proc.pid, lambda: _terminate(proc))
        assert proc.stdout is not None

        async def pump() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                measured.lines.put_nowait(raw.decode().rstrip("\n"))

        task = asyncio.create_task(pump())
        measured.stop = lambda: _terminate(proc, task)
        try:
            line = await _line(measured, "READY", READY_TIMEOUT)
        except BaseException:
            await _terminate(proc, task)
            raise RuntimeError(
                f"{name} did not get ready: {(self.tmp / f'{name}.log').read_text()[-2000:]}"
            ) from None
        del line
        measured.stdin = proc.stdin
        return measured

    async def launch(
        self, variant: str, kind: str, channel: str, n: int, size: int, latencies: Path
    ) -> Measured:
        url = self.servers[kind].url if kind else ""
        transport = TRANSPORT.get(kind, "")
        if variant == "bridge":
            return await self._bridge({"bench": self._endpoint(kind, [channel])})
        if variant == "bridge+uvloop":  # the same daemon on uvloop's event loop
            return await self._bridge({"bench": self._endpoint(kind, [channel])}, UVLOOP_ARGV)
        if variant == "node":
            argv = ["node", "node_bridge.mjs", url, transport, channel, self.exchange, AMQP_URL]
            return await self._process(argv, BENCH_DIR, "node-bridge")
        argv = [
            sys.executable, "-m", "bench.variants", variant, "--url", url,
            "--transport", transport, "--channel", channel, "--exchange", self.exchange,
            "--amqp", AMQP_URL, "-n", str(n), "--size", str(size), "--latencies", str(latencies),
        ]  # fmt: skip
        return await self._process(argv, ROOT, variant)

    # -- one measured stream --------------------------------------------------------------

    async def stream(
        self,
        scenario: str,
        variant: str,
        kind: str,
        n: int,
        size: int,
        rate: float | None,
        *,
        record: bool = True,
    ) -> Result:
        """Run one variant over one stream of ``n`` messages and measure it (``record``: add
        it to the results and print it)."""
        assert self.consumer is not None
        channel = self.channel()
        key = channel[1:].replace("/", ".")
        label = SERVER_LABEL.get(kind, "-")
        result = Result(scenario, label, variant, n)
        latency_file = self.tmp / f"latencies-{self._runs}.json"
        try:
            proc = await self.launch(
                variant, kind, channel, n, max(0, size - JSON_OVERHEAD), latency_file
            )
        except Exception as exc:
            result.note = f"did not start: {exc}"[:200]
            result.missing = n
            self.results.append(result)
            _print_row(result)
            return result
        try:
            self.consumer.expect({key: n} if variant != "receive-only" else {})
            if self.around_stream is not None:
                self.around_stream[0](proc.pid)
            cpu0 = procstat.cpu_seconds(proc.pid)
            others0 = self._others_cpu(kind)
            t0 = time.time()
            if variant.startswith("publish-only"):
                assert proc.stdin is not None
                proc.stdin.write(b"GO\n")
            else:
                await self.servers[kind].publish(
                    channel, n, size=max(0, size - JSON_OVERHEAD), rate=rate, wait=False
                )
            within = 30 + n / 300 + (n / rate if rate else 0)
            if variant == "receive-only":
                line = await _line(proc, "DONE ", within)
                done = json.loads(line[5:])
                t1 = float(done["t_last"])
                result.set_latencies(json.loads(await asyncio.to_thread(latency_file.read_text)))
                result.missing, result.duplicates = done["missing"], done["duplicates"]
                result.out_of_order = done["out_of_order"]
            else:
                if not await self.consumer.wait_complete(within):
                    result.note = "incomplete within the time limit"
                t1 = self.consumer.counter.last_ms / 1000.0
            result.cpu_s = procstat.cpu_seconds(proc.pid) - cpu0
            result.others_cpu = _minus(self._others_cpu(kind), others0)
            result.peak_rss_mb = procstat.peak_rss_mb(proc.pid)
            result.seconds = max(1e-6, t1 - t0) if t1 else None
            if self.around_stream is not None:
                await self.around_stream[1](proc.pid)
        except Exception as exc:
            result.note = f"failed: {type(exc).__name__}: {exc}"[:200]
        finally:
            await proc.stop()
        if variant != "receive-only":
            r = self.consumer.counter.report()
            result.missing, result.duplicates, result.out_of_order = (
                r.missing,
                r.duplicates,
                r.out_of_order,
            )
            if not variant.startswith("publish-only"):  # no server timestamp in them
                result.set_latencies(r.latencies_ms)
        if record:
            self.results.append(result)
            _print_row(result)
        return result

    # -- endpoint scale -------------------------------------------------------------------

    async def idle(self, kind: str, count: int, window: float) -> dict[str, Any]:
        tag = self.channel()
        endpoints = {f"e{i}": self._endpoint(kind, [f"{tag}/e{i}"]) for i in range(count)}
        t0 = time.monotonic()
        proc = await self._bridge(endpoints)
        startup = time.monotonic() - t0
        try:
            cpu0 = procstat.cpu_seconds(proc.pid)
            await asyncio.sleep(window)  # measuring idle CPU over a wall-clock window
            cpu = procstat.cpu_seconds(proc.pid) - cpu0
            row = {
                "scenario": f"{count} idle endpoints",
                "server": SERVER_LABEL[kind],
                "rss_mb": procstat.rss_mb(proc.pid),
                "cpu_pct": cpu / window * 100,
                "ready_s": startup,
            }
        finally:
            await proc.stop()
        self.scale.append(row)
        print(
            f"  {row['scenario']:<22}{row['server']:<18} RSS {row['rss_mb']:6.1f} MB  "
            f"CPU {row['cpu_pct']:5.2f} % of a core  (ready after {startup:.1f} s)",
            flush=True,
        )
        return row

    async def busy(self, kind: str, count: int, n: int, size: int) -> Result:
        assert self.consumer is not None
        tag = self.channel()
        channels = [f"{tag}/e{i}" for i in range(count)]
        per = n // count
        result = Result(
            f"{count} busy endpoints, {size} B", SERVER_LABEL[kind], "bridge", per * count
        )
        proc = await self._bridge(
            {f"e{i}": self._endpoint(kind, [c]) for i, c in enumerate(channels)}
        )
        try:
            self.consumer.expect({c[1:].replace("/", "."): per for c in channels})
            cpu0 = procstat.cpu_seconds(proc.pid)
            others0 = self._others_cpu(kind)
            t0 = time.time()
            pad = max(0, size - JSON_OVERHEAD)
            await asyncio.gather(
                *(self.servers[kind].publish(c, per, size=pad, wait=False) for c in channels)
            )
            if not await self.consumer.wait_complete(30 + n / 300):
                result.note = "incomplete within the time limit"
            result.seconds = self.consumer.counter.last_ms / 1000.0 - t0
            result.cpu_s = procstat.cpu_seconds(proc.pid) - cpu0
            result.others_cpu = _minus(self._others_cpu(kind), others0)
            result.peak_rss_mb = procstat.peak_rss_mb(proc.pid)
        finally:
            await proc.stop()
        r = self.consumer.counter.report()
        result.missing, result.duplicates, result.out_of_order = (
            r.missing,
            r.duplicates,
            r.out_of_order,
        )
        result.p50_ms, result.p99_ms = (
            percentile(r.latencies_ms, 0.5),
            percentile(r.latencies_ms, 0.99),
        )
        self.results.append(result)
        _print_row(result)
        return result


def merge(parts: list[Result]) -> Result:
    """One result from rounds of the same variant (interleaved with the others)."""
    first = parts[0]
    merged = Result(first.scenario, first.server, first.variant, sum(p.n for p in parts))
    if all(p.seconds for p in parts):
        merged.seconds = sum(p.seconds or 0.0 for p in parts)
    if all(p.cpu_s is not None for p in parts):
        merged.cpu_s = sum(p.cpu_s or 0.0 for p in parts)
    merged.peak_rss_mb = max((p.peak_rss_mb or 0.0) for p in parts) or None
    merged.missing = sum(p.missing for p in parts)
    merged.duplicates = sum(p.duplicates for p in parts)
    merged.out_of_order = sum(p.out_of_order for p in parts)
    merged.note = "; ".join(p.note for p in parts if p.note)
    merged.set_latencies([v for p in parts for v in p.latencies_ms])
    return merged


def _minus(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in after.items() if k in before}


async def _line(measured: Measured, prefix: str, within: float) -> str:
    async with asyncio.timeout(within):
        while True:
            line = await measured.lines.get()
            if line.startswith(prefix):
                return line


async def _terminate(
    proc: asyncio.subprocess.Process, task: asyncio.Task[None] | None = None
) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    if task is not None:
        task.cancel()
        # The output pump's own failure (if any) already failed the run that read from it.
        await asyncio.gather(task, return_exceptions=True)


# -- output ----------------------------------------------------------------------------------

HEAD = (
    f"  {'scenario':<26}{'server':<18}{'variant':<21}{'msg/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
    f"{'RSS MB':>8}{'CPU s/10k':>10}{'miss':>6}{'dup':>5}{'ooo':>5}"
)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_row(r: Result) -> None:
    print(
        f"  {r.scenario:<26}{r.server:<18}{r.variant:<21}{_fmt(r.rate, ',.0f'):>9}"
        f"{_fmt(r.p50_ms, '.1f'):>8}{_fmt(r.p99_ms, '.1f'):>8}{_fmt(r.peak_rss_mb, '.1f'):>8}"
        f"{_fmt(r.cpu_per_10k, '.2f'):>10}{r.missing:>6}{r.duplicates:>5}{r.out_of_order:>5}"
        + (f"  {r.note}" if r.note else ""),
        flush=True,
    )


def ratios(results: list[Result]) -> list[dict[str, Any]]:
    """bridge / baseline, bridge / sink ceiling, bridge / source ceiling, bridge / node."""
    by = {(r.scenario, r.server, r.variant): r for r in results}
    sink = {r.scenario: r for r in results if r.variant == "publish-only"}
    fast_sink = {r.scenario: r for r in results if r.variant == "publish-only-bridge"}
    rows = []
    for (scenario, server, variant), r in by.items():
        if variant != "bridge" or not scenario.startswith("burst") or r.rate is None:
            continue

        def div(other: Result | None, rate: float = r.rate) -> float | None:
            return rate / other.rate if other is not None and other.rate else None

        rows.append(
            {
                "scenario": scenario,
                "server": server,
                "bridge": r.rate,
                "vs_baseline": div(by.get((scenario, server, "baseline"))),
                "vs_sink": div(sink.get(scenario)),
                "vs_fast_sink": div(fast_sink.get(scenario)),
                "vs_source": div(by.get((scenario, server, "receive-only"))),
                "vs_node": div(by.get((scenario, server, "node"))),
            }
        )
    return rows


def markdown(bench: Bench, machine: dict[str, str], elapsed: float) -> str:
    out = markdown_header(machine, elapsed)
    out += ["### Streams", ""]
    out += [
        "| scenario | server | variant | msg/s | p50 ms | p99 ms | peak RSS MB | CPU s/10k "
        "| missing | dup | out of order |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in bench.results:
        out.append(
            f"| {r.scenario} | {r.server} | {r.variant} | {_fmt(r.rate, ',.0f')} "
            f"| {_fmt(r.p50_ms, '.1f')} | {_fmt(r.p99_ms, '.1f')} | {_fmt(r.peak_rss_mb, '.1f')} "
            f"| {_fmt(r.cpu_per_10k, '.2f')} | {r.missing} | {r.duplicates} | {r.out_of_order} |"
            + (f" {r.note}" if r.note else "")
        )
    out += ["", "### Ratios (msg/s, same run)", ""]
    out += [
        "| scenario | server | bridge msg/s | bridge/baseline | bridge/sink ceiling (aio-pika) "
        "| bridge/publish-only bridge.amqp | bridge/source ceiling | bridge/node |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ratios(bench.results):
        out.append(
            f"| {row['scenario']} | {row['server']} | {row['bridge']:,.0f} "
            f"| {_fmt(row['vs_baseline'], '.2f')} | {_fmt(row['vs_sink'], '.2f')} "
            f"| {_fmt(row['vs_fast_sink'], '.2f')} "
            f"| {_fmt(row['vs_source'], '.2f')} | {_fmt(row['vs_node'], '.2f')} |"
        )
    out += ["", "### Where the CPU went during the bursts (CPU s per 10,000 messages)", ""]
    out += [
        "| scenario | server | variant | measured process | broker | CometD server "
        "| bench consumer | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in bench.results:
        if not r.others_cpu or not r.n or "msg/s x" in r.scenario:
            continue

        def per10k(key: str, r: Result = r) -> str:
            value = r.others_cpu.get(key)
            return "-" if value is None else f"{value / r.n * 10_000:.2f}"

        out.append(
            f"| {r.scenario} | {r.server} | {r.variant} | {_fmt(r.cpu_per_10k, '.2f')} "
            f"| {per10k('broker')} | {per10k('server')} | {per10k('consumer')} "
            f"| {_fmt(r.seconds, '.2f')} |"
        )
    out += ["", "### Endpoint scale (one bridge process)", ""]
    out += [
        "| scenario | server | RSS MB | CPU % of a core | ready after s |",
        "|---|---|---:|---:|---:|",
    ]
    for row in bench.scale:
        out.append(
            f"| {row['scenario']} | {row['server']} | {row['rss_mb']:.1f} "
            f"| {row['cpu_pct']:.2f} | {row['ready_s']:.1f} |"
        )
    return "\n".join(out) + "\n"


# -- the plan --------------------------------------------------------------------------------


def _node_available() -> bool:
    modules = BENCH_DIR / "node_modules"
    return all((modules / p).is_dir() for p in ("cometd", "cometd-nodejs-client", "amqplib"))


async def main(args: argparse.Namespace) -> str:
    if args.only == "ha":
        # Imported here: bench/ha.py has its own servers, consumers and tables.
        from bench import ha

        return await ha.main(args)
    started = time.monotonic()
    if _node_available():
        variants = ["bridge", "baseline", "receive-only", "node"]
    else:
        variants = ["bridge", "baseline", "receive-only"]
        print("(Node reference bridge skipped: run `npm ci` in bench/)", flush=True)
    bench = Bench(args)
    await bench.setup()
    try:
        assert bench.consumer is not None
        machine = describe(bench.consumer.server_properties)
        print("Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
        n, rate_n = args.n, int(args.rate * args.rate_seconds)
        print(HEAD, flush=True)
        if args.only == "memory":
            # Peak RSS of the daemon while a 20,000 x 2 KB burst is queued at the server.
            for kind in ("cometd", "faye"):
                await bench.stream("burst 2000 B", "bridge", kind, n, 2000, None)
            elapsed = time.monotonic() - started
            text = markdown(bench, machine, elapsed)
            print(text)
            return text
        # Interleaved: each scenario runs every variant once, the order rotating per scenario,
        # so slow drifts of the machine spread over all of them.
        turn = 0
        for size in (200, 2000):
            for sink in ("publish-only", "publish-only-bridge"):
                await bench.stream(f"burst {size} B", sink, "", n, size, None)
            for kind in ("cometd", "faye"):
                these = variants + (["bridge+uvloop"] if args.uvloop and size == 200 else [])
                order = these[turn % len(these) :] + these[: turn % len(these)]
                turn += 1
                for variant in order:
                    await bench.stream(f"burst {size} B", variant, kind, n, size, None)
        # The fixed rate in two interleaved rounds of half the time each: the p99 of a few
        # thousand samples is sensitive to whatever else the machine does at that moment.
        scenario = f"{args.rate:.0f} msg/s x {args.rate_seconds:.0f} s"
        rounds: dict[tuple[str, str], list[Result]] = {}
        for rnd in range(2):
            for kind in ("cometd", "faye"):
                order = variants[rnd:] + variants[:rnd]
                for variant in order:
                    part = await bench.stream(
                        scenario, variant, kind, rate_n // 2, 200, args.rate, record=False
                    )
                    rounds.setdefault((kind, variant), []).append(part)
        for parts in rounds.values():
            merged = merge(parts)
            bench.results.append(merged)
            _print_row(merged)
        await bench.busy("faye", 10, n, 200)
        if not args.quick:
            await bench.busy("cometd", 10, n, 200)
        print("  idle endpoints:", flush=True)
        for kind in ("faye", "cometd") if not args.quick else ("faye",):
            for count in (1, 10, 100) if not args.quick else (1, 10):
                await bench.idle(kind, count, args.idle_window)
        elapsed = time.monotonic() - started
        text = markdown(bench, machine, elapsed)
    finally:
        await bench.teardown()
    print()
    print(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="a short run (smaller bursts, fewer scales)"
    )
    p.add_argument(
        "--n", type=int, default=None, help="messages per burst (default 20000; quick 3000)"
    )
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--rate-seconds", type=float, default=None, help="default 10; quick 3")
    p.add_argument("--idle-window", type=float, default=None, help="seconds; default 5; quick 2")
    p.add_argument("--markdown", help="also write the tables to this file")
    p.add_argument(
        "--uvloop", action="store_true", help="also run the bridge on uvloop (200 B bursts)"
    )
    p.add_argument(
        "--only",
        choices=["memory", "ha"],
        help="run one part: memory (2 KB bursts, bridge only) or ha (replicas: busy endpoints"
        " over 1 and 3 replicas, failover after SIGKILL); with ha, --n is the burst over all"
        " endpoints (default 60000; quick 3000)",
    )
    p.add_argument(
        "--ha-endpoints", type=int, default=None, help="ha: busy endpoints (default 30; quick 6)"
    )
    p.add_argument(
        "--ha-kills", type=int, default=None, help="ha: kills of the active (default 10; quick 3)"
    )
    p.add_argument(
        "--ha-rounds", type=int, default=None, help="ha: rounds of the bursts (default 2; quick 1)"
    )
    p.add_argument("--ha-rate", type=float, default=200.0, help="ha: failover stream, msg/s")
    p.add_argument(
        "--ha-steady",
        type=float,
        default=None,
        help="ha: seconds' worth of messages the owner streams before each kill (2; quick 0.5)",
    )
    args = p.parse_args(argv)
    if args.only == "ha":
        args.n = args.n or (3000 if args.quick else 60_000)
    args.n = args.n or (3000 if args.quick else 20_000)
    args.ha_endpoints = args.ha_endpoints or (6 if args.quick else 30)
    args.ha_kills = args.ha_kills or (3 if args.quick else 10)
    args.ha_rounds = args.ha_rounds or (1 if args.quick else 2)
    args.ha_steady = args.ha_steady or (0.5 if args.quick else 2.0)
    args.rate_seconds = args.rate_seconds or (3.0 if args.quick else 10.0)
    args.idle_window = args.idle_window or (2.0 if args.quick else 5.0)
    return args


if __name__ == "__main__":
    cli_args = parse_args()
    report = asyncio.run(main(cli_args))
    if cli_args.markdown:
        Path(cli_args.markdown).write_text(report)
