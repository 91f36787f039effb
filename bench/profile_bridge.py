"""Profile the real bridge process under a burst: where does each message's CPU go?

Usage: .venv/bin/python bench/profile_bridge.py [--server cometd|faye] [--n N] [--size B]
       [--profiler cprofile|pyinstrument] [--out DIR]

Runs ``python -m bridge run`` under the profiler against a real server and bursts N messages
through it into RabbitMQ (counted exactly by the bench consumer). cProfile covers only the
stream (switched on by SIGUSR1 just before the burst, off and dumped by SIGUSR2 once every
message is consumed), so its figures are per message, startup excluded; pyinstrument covers
the whole process (stopped by SIGTERM). Prints the functions with the most own time, as
microseconds per message (cProfile's own overhead inflates small functions). pyinstrument must
be installed for ``--profiler pyinstrument`` (``.venv/bin/pip install pyinstrument``; not a
project dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import run as bench_run  # noqa: E402


# The bridge with a profiler that SIGUSR1 switches on and SIGUSR2 off (then dumped to argv[1]).
_CPROFILE_ON_SIGNAL = """
import cProfile, os, runpy, signal, sys
path = sys.argv[1]
profile = cProfile.Profile()
def stop(*_):
    profile.disable()
    profile.dump_stats(path + ".tmp")
    os.replace(path + ".tmp", path)  # appears whole
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
signal.signal(signal.SIGUSR2, stop)
sys.argv = ["bridge", "run"]
runpy.run_module("bridge", run_name="__main__")
"""


def _written(path: Path) -> bool:
    return path.exists()


async def _dump(path: Path, pid: int) -> None:
    """Switch the profiler off and wait (bounded) for its dump (``main`` removed any old one)."""
    os.kill(pid, signal.SIGUSR2)
    async with asyncio.timeout(30):
        while not _written(path):  # noqa: ASYNC110 (another process writes it: nothing to await)
            await asyncio.sleep(0.05)


async def main(args: argparse.Namespace, out: Path) -> None:
    stats_path = out / "bridge.prof"
    bench = bench_run.Bench(bench_run.parse_args(["--quick"]))
    if args.profiler == "cprofile":
        bench.bridge_argv = [sys.executable, "-c", _CPROFILE_ON_SIGNAL, str(stats_path)]
        bench.around_stream = (lambda pid: os.kill(pid, signal.SIGUSR1), partial(_dump, stats_path))
    else:
        bench.bridge_argv = [
            *(sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(out / "bridge.txt")),
            *("-m", "bridge", "run"),
        ]
    await bench.setup()
    try:
        t0 = time.monotonic()
        r = await bench.stream(
            f"profile {args.size} B", "bridge", args.server, args.n, args.size, None
        )
        print(f"burst done in {time.monotonic() - t0:.1f} s: {r.rate or 0:,.0f} msg/s", flush=True)
    finally:
        await bench.teardown()
    if args.profiler == "cprofile":
        report(stats_path, args.n, args.top)
    else:
        print((out / "bridge.txt").read_text())


def report(path: Path, n: int, top: int) -> None:
    """Own time per function, as µs per message, heaviest first."""
    stats = pstats.Stats(str(path))
    rows = []
    table: dict[Any, Any] = getattr(stats, "stats", {})  # pstats keeps its rows untyped
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in table.items():
        rows.append((tottime, cumtime, calls, f"{Path(file).name}:{line}({func})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"total profiled CPU {total:.2f} s = {total / n * 1e6:.1f} µs per message (n={n})")
    print(f"{'own µs/msg':>10}{'cum µs/msg':>11}{'calls/msg':>10}  function")
    for tottime, cumtime, calls, name in rows[:top]:
        print(f"{tottime / n * 1e6:>10.2f}{cumtime / n * 1e6:>11.2f}{calls / n:>10.2f}  {name}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", choices=["cometd", "faye"], default="cometd")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--profiler", choices=["cprofile", "pyinstrument"], default="cprofile")
    p.add_argument("--out", default="/tmp/cometd-bridge-profile")
    p.add_argument("--top", type=int, default=30)
    cli_args = p.parse_args()
    out_dir = Path(cli_args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bridge.prof").unlink(missing_ok=True)
    asyncio.run(main(cli_args, out_dir))
