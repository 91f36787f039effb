"""``python -m bridge.demo --port 8090 --rate 5``: run the demo CometD source standalone."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from bridge.demo.events import DEFAULT_CHANNELS
from bridge.demo.source import DemoSource


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.demo",
        description="Serve a demo CometD (Bayeux) endpoint that publishes realistic events.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    parser.add_argument("--port", type=int, default=8090, help="port (0 = any free one)")
    parser.add_argument("--rate", type=float, default=5.0, help="events per second in total")
    parser.add_argument("--seed", type=int, default=None, help="make the events reproducible")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with DemoSource(args.host, args.port, rate=args.rate, seed=args.seed) as source:
        print(f"demo CometD source: {source.url}", flush=True)
        print(f"  channels: {', '.join(DEFAULT_CHANNELS)} at {args.rate:g} events/s", flush=True)
        await stop.wait()
        print(f"stopping; published {sum(source.published.values())} events", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"demo source: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
