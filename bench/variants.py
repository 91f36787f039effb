"""The comparison points of the benchmark, each run by bench/run.py as its own process.

``python -m bench.variants MODE ...`` prints ``READY`` once it is ready to measure, then:

- ``baseline``: the simplest bridge a Python user writes with our client: ``async for`` over
  the client, build an aio-pika message, ``await`` its confirmed publish, one at a time;
- ``receive-only``: the source ceiling: our client receiving as fast as it can, publishing
  nothing; prints ``DONE {json}`` with its own exact count once every message arrived;
- ``publish-only``: the sink ceiling: aio-pika pipelined confirms (512 in flight) of pre-built
  messages, started by a ``GO`` line on stdin; prints ``DONE {json}`` when all are confirmed;
- ``publish-only-bridge``: the same with the bridge's own publisher (``bridge.amqp``) and
  router: how fast this broker takes confirmed messages at all, CometD aside.

Messages follow the AMQP contract of docs/CONTRACTS.md closely enough to cost the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika

from bench.counting import SeqCounter
from bridge.cometd import Client, ConnectionType


WINDOW = 512


def _dotted(channel: str) -> str:
    return channel[1:].replace("/", ".")


def _amqp_message(endpoint: str, message: dict[str, Any], now: float) -> aio_pika.Message:
    channel = message["channel"]
    headers: dict[str, Any] = {"cometd-endpoint": endpoint, "cometd-channel": channel}
    if "id" in message:
        headers["cometd-id"] = str(message["id"])
    return aio_pika.Message(
        json.dumps(message["data"], separators=(",", ":")).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=f"{endpoint}:{channel}:i{message.get('id')}",
        timestamp=now,
        headers=headers,
    )


async def baseline(args: argparse.Namespace) -> None:
    conn = await aio_pika.connect(args.amqp)
    channel = await conn.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(args.exchange, ensure=False)
    async with Client(args.url, ConnectionType(args.transport)) as client:
        await client.subscribe(args.channel)
        print("READY", flush=True)
        async for message in client:
            await exchange.publish(
                _amqp_message("bench", message, time.time()),
                _dotted(message["channel"]),
                mandatory=True,
                timeout=10,
            )


async def receive_only(args: argparse.Namespace) -> None:
    counter = SeqCounter({args.channel: args.n})
    async with Client(args.url, ConnectionType(args.transport), max_pending_count=1000) as client:
        await client.subscribe(args.channel)
        print("READY", flush=True)
        while not counter.complete:
            batch = await client.receive_many(1000)
            now_ms = time.time() * 1000.0
            for message in batch:
                data = message["data"]
                counter.add(message["channel"], data["seq"], data["ts"], now_ms)
        done = time.time()
    r = counter.report()
    summary = {
        "t_last": done,
        "missing": r.missing,
        "duplicates": r.duplicates,
        "out_of_order": r.out_of_order,
    }
    # Every latency goes to a file (tens of thousands of values; stdout carries one line).
    await asyncio.to_thread(Path(args.latencies).write_text, json.dumps(r.latencies_ms))
    print("DONE " + json.dumps(summary), flush=True)


async def publish_only(args: argparse.Namespace) -> None:
    conn = await aio_pika.connect(args.amqp)
    channel = await conn.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(args.exchange, ensure=False)
    pad = "x" * args.size
    key = _dotted(args.channel)
    now = time.time()
    messages = [
        _amqp_message(
            "bench",
            {"channel": args.channel, "id": str(seq), "data": {"seq": seq, "ts": 0, "pad": pad}},
            now,
        )
        for seq in range(1, args.n + 1)
    ]
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # GO
    window = asyncio.Semaphore(WINDOW)

    async def one(message: aio_pika.Message) -> None:
        try:
            await exchange.publish(message, key, mandatory=True, timeout=30)
        finally:
            window.release()

    tasks = []
    for message in messages:
        await window.acquire()
        tasks.append(asyncio.create_task(one(message)))
    await asyncio.gather(*tasks)
    print("DONE " + json.dumps({"t_last": time.time()}), flush=True)
    await conn.close()


async def publish_only_bridge(args: argparse.Namespace) -> None:
    from bridge.amqp import AmqpSink
    from bridge.routing import Router

    conn = await aio_pika.connect_robust(args.amqp)
    publisher = AmqpSink(conn, "bench", max_inflight=WINDOW, publish_timeout=30)
    await publisher.start()
    router = Router("bench", args.exchange)
    pad = "x" * args.size
    now = time.time()
    messages = [
        router.route(
            {"channel": args.channel, "id": str(seq), "data": {"seq": seq, "ts": 0, "pad": pad}},
            now,
        )
        for seq in range(1, args.n + 1)
    ]
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # GO
    left = len(messages)
    done = asyncio.get_running_loop().create_future()

    def on_done(_msg: Any, _result: Any) -> None:
        nonlocal left
        left -= 1
        if not left:
            done.set_result(None)

    for message in messages:
        publisher.submit(message, on_done)
    await done
    print("DONE " + json.dumps({"t_last": time.time()}), flush=True)
    await publisher.close(5)
    await conn.close()


MODES = {
    "baseline": baseline,
    "receive-only": receive_only,
    "publish-only": publish_only,
    "publish-only-bridge": publish_only_bridge,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--url", default="")
    p.add_argument("--transport", default="long-polling")
    p.add_argument("--channel", required=True)
    p.add_argument("--exchange", default="")
    p.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("-n", type=int, default=0)
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--latencies", default="/dev/null", help="receive-only: write latencies here")
    args = p.parse_args()
    asyncio.run(MODES[args.mode](args))


if __name__ == "__main__":
    main()
