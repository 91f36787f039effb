"""Run the real bridge as a subprocess and watch what reaches RabbitMQ.

Used by the end-to-end and fault tests: the bridge is started exactly as an operator starts it
(``python -m bridge run`` configured by environment variables), and a test consumer counts every
message that arrives in a queue bound to the bridge's exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp


AMQP_URL = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BridgeProcess:
    """A ``cometd-bridge run`` subprocess with its HTTP port and log file."""

    env: dict[str, str]
    log_path: Path
    clear_env: bool = False
    # 0: the bridge binds any free port and logs it ("http server bound"); no port is chosen
    # here and released for someone else to take before the bridge binds it.
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _bound_port: int | None = field(default=None, repr=False)
    _log_offset: int = field(default=0, repr=False)  # where this start's log lines begin

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        """The HTTP port; with ``http_port=0`` read from the bridge's log once it bound it
        (raises ConnectionRefusedError until then, which the waits treat as not up yet)."""
        if self.http_port:
            return self.http_port
        if self._bound_port is None:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)  # this start's lines, not an earlier start's
                lines = log.read().decode(errors="replace").splitlines()
            for line in lines:
                if '"http server bound"' in line:
                    self._bound_port = int(json.loads(line)["port"])
                    break
            else:
                raise ConnectionRefusedError("the bridge has not bound its HTTP port yet")
        return self._bound_port

    def start(self) -> None:
        base = dict(os.environ)
        if self.clear_env:  # only what the test gives: no BRIDGE_* leaking in from outside
            base = {k: v for k, v in base.items() if not k.startswith("BRIDGE_")}
        env = {**base, **self.env, "BRIDGE_HTTP_PORT": str(self.http_port)}
        self._bound_port = None
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env.setdefault("BRIDGE_HTTP_HOST", "127.0.0.1")
        env.setdefault("BRIDGE_LOG_FORMAT", "json")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def command(self) -> list[str]:
        """The command line that runs the bridge."""
        return [sys.executable, "-m", "bridge", "run"]

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(self.base_url + path) as resp,
        ):
            return resp.status, await resp.text()

    async def wait_ready(self, within: float = 30.0) -> None:
        """Wait until /readyz answers 200; fail with the log tail if the process died."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"bridge exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                status, _ = await self.get("/readyz")
                if status == 200:
                    return
            await asyncio.sleep(0.1)  # polling an external process: no event to await
        raise AssertionError(f"bridge not ready within {within}s:\n{self.log_tail()}")

    async def metrics(self) -> dict[str, float]:
        """Scrape /metrics into {'name{labels}': value}."""
        _, text = await self.get("/metrics")
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
        return samples

    async def status(self) -> Any:
        _, text = await self.get("/status")
        return json.loads(text)

    async def wait_status(self, predicate: Callable[[Any], bool], within: float) -> Any:
        """Poll /status (another process: nothing to await) until ``predicate`` holds."""
        deadline = time.monotonic() + within
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError, KeyError):
                last = await self.status()
                if predicate(last):
                    return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"status condition not met within {within}s: {last}")

    async def wait_metric(self, sample: str, value: float, within: float) -> float:
        """Poll /metrics until ``sample`` reaches ``value``."""
        deadline = time.monotonic() + within
        current: float | None = None
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                current = (await self.metrics()).get(sample)
                if current is not None and current >= value:
                    return current
            await asyncio.sleep(0.1)
        raise AssertionError(f"{sample} = {current}, expected >= {value} within {within}s")

    def log_events(self) -> list[dict[str, Any]]:
        """The bridge's JSON log lines, parsed (non-JSON lines skipped)."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def final_totals(self) -> dict[str, dict[str, int]]:
        """Per endpoint ``{received, confirmed, ...}`` from the shutdown log line."""
        for event in reversed(self.log_events()):
            if event.get("event") == "endpoint totals":
                return dict(event["totals"])
        raise AssertionError(f"no 'endpoint totals' log line:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait_exit(self, within: float = 30.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"bridge did not exit within {within}s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@contextlib.asynccontextmanager
async def running_bridge(
    env: Mapping[str, str], tmp_path: Path, *, wait_ready: bool = True, clear_env: bool = False
) -> AsyncIterator[BridgeProcess]:
    log_path = tmp_path / f"bridge-{time.monotonic_ns()}.log"
    bridge = BridgeProcess(env=dict(env), log_path=log_path, clear_env=clear_env)
    bridge.start()
    try:
        if wait_ready:
            await bridge.wait_ready()
        yield bridge
    finally:
        bridge.stop()


@dataclass
class Delivery:
    body: Any
    message_id: str | None
    routing_key: str | None
    headers: dict[str, Any]
    content_type: str | None
    delivery_mode: int | None


class QueueCollector:
    """A queue bound to an exchange that records every message that reaches it."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._changed = asyncio.Event()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange = ""

    async def start(
        self, exchange: str, exchange_type: str = "topic", binding: str = "#", url: str = AMQP_URL
    ) -> None:
        """Declare and consume; ``url`` is another broker's (a dedicated test node)."""
        self._exchange = exchange
        self._connection = await aio_pika.connect_robust(url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=2000)
        ex = await channel.declare_exchange(exchange, exchange_type, durable=True)
        # Not exclusive: it must survive a forced close of this connection (robust reconnect).
        queue = await channel.declare_queue(
            f"{exchange}.collector", auto_delete=False, arguments={"x-expires": 600_000}
        )
        await queue.bind(ex, routing_key=binding)
        await queue.consume(self._on_message)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        self.deliveries.append(
            Delivery(
                body=json.loads(message.body),
                message_id=message.message_id,
                routing_key=message.routing_key,
                headers=dict(message.headers or {}),
                content_type=message.content_type,
                delivery_mode=int(message.delivery_mode) if message.delivery_mode else None,
            )
        )
        self._changed.set()

    async def wait_for(
        self, count: int, within: float, *, what: str = "", quiet: bool = False
    ) -> None:
        """Wait until at least ``count`` distinct message ids arrived (bounded).

        Fails naming what is missing (``what`` says what the messages are for), unless
        ``quiet``: then it returns at the bound (a poll step of a longer wait)."""
        deadline = time.monotonic() + within
        while (arrived := len({d.message_id for d in self.deliveries})) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if quiet:
                    return
                raise AssertionError(
                    f"{what or 'messages'}: {arrived} of {count} arrived in {self._exchange!r}"
                    f" within {within}s"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def seqs(self, channel: str | None = None) -> list[int]:
        return [
            int(d.body["seq"])
            for d in self.deliveries
            if channel is None or d.headers.get("cometd-channel") == channel
        ]

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                channel = await self._connection.channel()
                await channel.queue_delete(f"{self._exchange}.collector")
                await channel.exchange_delete(self._exchange)
            await self._connection.close()
