"""``cometd-bridge demo``: the embedded demo source → the real bridge → the local RabbitMQ.

Everything runs in one process over real sockets: the demo Bayeux server, the bridge (the same
:class:`~bridge.supervisor.Supervisor` that ``run`` uses, with one endpoint), and a consumer on
a demo queue bound to the bridge's exchange that prints what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from typing import Any

import aio_pika

from bridge.demo.events import DEFAULT_CHANNELS
from bridge.demo.source import DemoSource
from bridge.logging import configure_logging
from bridge.settings import load_settings


__all__ = ["run_demo"]

DEMO_EXCHANGE = "cometd.demo"
DEMO_QUEUE = "cometd-bridge.demo"


def _port_or_free(port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _summary(body: Any) -> str:
    payload = body.get("payload", {}) if isinstance(body, dict) else {}
    event = body.get("event", {}) if isinstance(body, dict) else {}
    keep = {k: v for k, v in payload.items() if not isinstance(v, dict | list)}
    text = json.dumps(keep, separators=(",", ":"))[:110]
    return f"replayId={event.get('replayId')} {text}"


async def _demo(rate: float, count: int, http_port: int) -> int:
    from bridge.supervisor import Supervisor

    amqp_url = os.environ.get("BRIDGE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    async with DemoSource("127.0.0.1", 0, rate=rate, wait_for_subscribers=True) as source:
        port = _port_or_free(http_port)
        endpoint = {
            "url": source.url,
            "channels": list(DEFAULT_CHANNELS),
            "exchange": DEMO_EXCHANGE,
        }
        settings = load_settings(
            {
                "BRIDGE_AMQP_URL": amqp_url,
                "BRIDGE_ENDPOINTS": json.dumps({"demo": endpoint}),
                "BRIDGE_HTTP_HOST": "127.0.0.1",
                "BRIDGE_HTTP_PORT": str(port),
                "BRIDGE_SHUTDOWN_TIMEOUT": "5",
            }
        )
        # The demo queue is bound before the bridge starts: the first event (replayId 1001) is
        # routed to it instead of being dropped as unroutable.
        connection = await aio_pika.connect_robust(amqp_url)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(DEMO_EXCHANGE, "topic", durable=True)
            queue = await channel.declare_queue(DEMO_QUEUE, auto_delete=True)
            await queue.bind(exchange, "#")
        except BaseException:
            await connection.close()
            raise
        supervisor = Supervisor(settings)
        bridge = asyncio.create_task(supervisor.run(), name="bridge")

        print("cometd-bridge demo", flush=True)
        print(f"  CometD source : {source.url} ({rate:g} events/s)", flush=True)
        print(f"  RabbitMQ      : exchange {DEMO_EXCHANGE!r} → queue {DEMO_QUEUE!r}", flush=True)
        print(f"  metrics       : http://127.0.0.1:{port}/metrics", flush=True)
        print(f"  status        : http://127.0.0.1:{port}/status", flush=True)
        print("  Ctrl-C stops it.\n", flush=True)

        received = 0
        done = asyncio.Event()
        try:

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal received
                async with message.process():
                    received += 1
                    body = json.loads(message.body)
                    print(f"  ← {message.routing_key:<24} {_summary(body)}", flush=True)
                    if count and received >= count:
                        done.set()

            await queue.consume(on_message)
            stop_task = asyncio.create_task(done.wait())
            await asyncio.wait({bridge, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
        finally:
            supervisor.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await bridge
            await connection.close()
        print(f"\n{received} messages arrived in RabbitMQ.", flush=True)
        return 0


def run_demo(*, rate: float = 5.0, count: int = 0, http_port: int = 8080) -> int:
    """Run the demo until Ctrl-C (or ``count`` messages); returns the exit code."""
    configure_logging("WARNING", "console" if sys.stdout.isatty() else "json")
    try:
        return asyncio.run(_demo(rate, count, http_port))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"demo: cannot reach RabbitMQ or open a port: {exc}", file=sys.stderr)
        return 1
