"""Publish-only ceiling: aio-pika pipelined confirms vs bridge.amqp, same run, interleaved.

``bridge.amqp public`` is the fallback publisher on aio-pika's public API
(``bridge.amqp.public_publisher``), what endpoints get on an untested aiormq version.

Usage: .venv/bin/python bench/publish_ceiling.py [N] [ROUNDS]
Confirms are the end point (no consumer): each variant publishes N x 200 B messages to a
fresh durable-less topic exchange bound to one auto-delete queue, and waits for every confirm.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika


URL = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
BODY = b'{"payload":"' + b"x" * 186 + b'"}'  # 200 bytes
WINDOW = 512


@dataclass(frozen=True)
class Msg:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    timestamp: float
    headers: dict[str, Any] = field(default_factory=dict)
    channel: str = "/bench"
    replay_id: int | None = None


def _messages(exchange: str, n: int) -> list[Msg]:
    now = time.time()
    return [
        Msg(
            exchange,
            "bench.x",
            BODY,
            f"bench:/bench:i{i}",
            now,
            {"cometd-endpoint": "bench", "cometd-channel": "/bench", "cometd-id": str(i)},
        )
        for i in range(n)
    ]


async def _topology(conn: aio_pika.abc.AbstractRobustConnection) -> tuple[str, Any]:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    ch = await conn.channel()
    ex = await ch.declare_exchange(name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    q = await ch.declare_queue(name, auto_delete=True, arguments={"x-max-length": 1})
    await q.bind(ex, "#")
    return name, (ch, ex, q)


async def aio_pika_pipelined(conn: aio_pika.abc.AbstractRobustConnection, msgs: list[Msg]) -> None:
    """The best plain aio-pika does: Exchange.publish tasks, a bounded in-flight window."""
    ch = await conn.channel(publisher_confirms=True)
    ex = await ch.get_exchange(msgs[0].exchange, ensure=False)
    sem = asyncio.Semaphore(WINDOW)

    async def one(m: Msg) -> None:
        try:
            await ex.publish(
                aio_pika.Message(
                    m.body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=m.message_id,
                    timestamp=m.timestamp,
                    headers=m.headers,
                ),
                m.routing_key,
                mandatory=True,
                timeout=30,
            )
        finally:
            sem.release()

    tasks = []
    for m in msgs:
        await sem.acquire()
        tasks.append(asyncio.create_task(one(m)))
    await asyncio.gather(*tasks)
    await ch.close()


async def bridge_publisher(conn: aio_pika.abc.AbstractRobustConnection, msgs: list[Msg]) -> None:
    """bridge.amqp.AmqpSink with the completion callback API."""
    from bridge.amqp import AmqpSink

    pub = AmqpSink(conn, "bench", max_inflight=WINDOW, publish_timeout=30)
    await pub.start()
    left = len(msgs)
    done = asyncio.get_running_loop().create_future()

    def on_done(_m: Any, _r: Any) -> None:
        nonlocal left
        left -= 1
        if not left:
            done.set_result(None)

    for m in msgs:
        pub.submit(m, on_done)
    await done
    await pub.close(5)


async def bridge_publisher_futures(
    conn: aio_pika.abc.AbstractRobustConnection, msgs: list[Msg]
) -> None:
    """bridge.amqp.AmqpSink with one future per message (publish())."""
    from bridge.amqp import AmqpSink

    pub = AmqpSink(conn, "bench", max_inflight=WINDOW, publish_timeout=30)
    await pub.start()
    await asyncio.gather(*(pub.publish(m) for m in msgs))
    await pub.close(5)


async def bridge_public_publisher(
    conn: aio_pika.abc.AbstractRobustConnection, msgs: list[Msg]
) -> None:
    """bridge.amqp.public_publisher.PublicApiPublisher with the completion callback API."""
    from bridge.amqp.public_publisher import PublicApiPublisher

    pub = PublicApiPublisher(conn, "bench", max_inflight=WINDOW, publish_timeout=30)
    await pub.start()
    left = len(msgs)
    done = asyncio.get_running_loop().create_future()

    def on_done(_m: Any, _r: Any) -> None:
        nonlocal left
        left -= 1
        if not left:
            done.set_result(None)

    for m in msgs:
        pub.submit(m, on_done)
    await done
    await pub.close(5)


VARIANTS: dict[str, Callable[[Any, list[Msg]], Awaitable[None]]] = {
    "aio-pika pipelined": aio_pika_pipelined,
    "bridge.amqp submit()": bridge_publisher,
    "bridge.amqp publish()": bridge_publisher_futures,
    "bridge.amqp public": bridge_public_publisher,
}


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    only = sys.argv[3].split(",") if len(sys.argv) > 3 else list(VARIANTS)
    conn = await aio_pika.connect_robust(URL, client_properties={"connection_name": "bench"})
    name, keep = await _topology(conn)
    msgs = _messages(name, n)
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in only}
    for _ in range(rounds):
        for label in only:  # interleaved, so machine noise spreads over every variant
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            await asyncio.wait_for(VARIANTS[label](conn, msgs), 120)
            wall = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            results[label].append((n / wall, cpu / n * 10_000))
    print(f"N={n} x {len(BODY)} B, window {WINDOW}, {rounds} rounds (best / median)")
    print(f"{'variant':<22}{'msg/s best':>12}{'msg/s med':>12}{'CPU s/10k':>12}")
    base = None
    for label, rs in results.items():
        rates = sorted(r for r, _ in rs)
        cpus = sorted(c for _, c in rs)
        med = rates[len(rates) // 2]
        base = base or med
        print(
            f"{label:<22}{rates[-1]:>12,.0f}{med:>12,.0f}{cpus[len(cpus) // 2]:>12.3f}"
            f"   x{med / base:.2f}"
        )
    del keep
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
