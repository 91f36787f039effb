"""A counting AMQP consumer fast enough not to be the benchmark's bottleneck.

A Python aio-pika consumer tops out near 11,000 msg/s on the bench machine, below what the
bridge is meant to reach. This one speaks just enough AMQP 0-9-1 itself: the handful of setup
frames go through pamqp, and the hot path parses ``basic.deliver`` / content header / body
frames by hand straight out of the socket buffer, with ``no_ack`` (the broker pushes without
waiting for acks; TCP flow control bounds it). Every body is still counted exactly: the routing
key names the stream and the body's ``seq`` is recorded in a :class:`~bench.counting.SeqCounter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from pamqp import commands as spec, frame as pframe
from pamqp.header import ProtocolHeader

from bench.counting import SeqCounter, parse_seq_ts
from bench.waiting import wait_until


__all__ = ["RawConsumer", "ConsumerError"]

_FRAME_HEAD = struct.Struct(">BHI")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_DELIVER = b"\x00\x3c\x00\x3c"  # class 60 (basic), method 60 (deliver)
_FRAME_MAX = 131072
_READ = 1 << 20


class ConsumerError(RuntimeError):
    """The broker closed the channel or connection, or sent something unexpected."""


class RawConsumer:
    """Consumes one existing queue on its own connection and counts what arrives."""

    def __init__(self, url: str, queue: str) -> None:
        self._url = url
        self._queue = queue
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.server_properties: dict[str, Any] = {}
        self.counter = SeqCounter()
        self.on_progress: Callable[[], None] | None = None
        self._changed = asyncio.Event()
        self.error: BaseException | None = None  # why the read loop ended, if it did

    # -- setup (pamqp; not on the hot path) ---------------------------------------------------

    async def start(self) -> None:
        parts = urlsplit(self._url)
        self._reader, self._writer = await asyncio.open_connection(
            parts.hostname or "127.0.0.1", parts.port or 5672, limit=_READ * 4
        )
        self._writer.write(pframe.marshal(ProtocolHeader(), 0))
        start = await self._expect(spec.Connection.Start)
        self.server_properties = dict(start.server_properties or {})
        user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        self._send(0, spec.Connection.StartOk(response=f"\0{user}\0{password}"))
        tune = await self._expect(spec.Connection.Tune)
        frame_max = min(_FRAME_MAX, tune.frame_max or _FRAME_MAX)
        self._send(0, spec.Connection.TuneOk(tune.channel_max, frame_max, 0))  # no heartbeats
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self._send(0, spec.Connection.Open(vhost))
        await self._expect(spec.Connection.OpenOk)
        self._send(1, spec.Channel.Open())
        await self._expect(spec.Channel.OpenOk)
        self._send(1, spec.Basic.Consume(queue=self._queue, consumer_tag="bench", no_ack=True))
        await self._expect(spec.Basic.ConsumeOk)
        self._task = asyncio.create_task(self._read_loop(), name="bench-consumer")

    def _send(self, channel: int, method: Any) -> None:
        assert self._writer is not None
        self._writer.write(pframe.marshal(method, channel))

    async def _expect(self, kind: type[Any]) -> Any:
        assert self._reader is not None
        head = await self._reader.readexactly(7)
        _, _, size = _FRAME_HEAD.unpack(head)
        rest = await self._reader.readexactly(size + 1)
        _, _, value = pframe.unmarshal(head + rest)
        if not isinstance(value, kind):
            raise ConsumerError(f"expected {kind.__name__}, got {value!r}")
        return value

    # -- counting -----------------------------------------------------------------------------

    def expect(self, expected: dict[str, int]) -> None:
        """Start a fresh count: routing key → how many messages (seq 1..n) it should carry."""
        self.counter = SeqCounter(expected)

    async def wait_complete(self, within: float) -> bool:
        """Wait (bounded) until every expected message arrived; False on timeout."""
        return await self.wait_for(lambda c: c.complete, within)

    async def wait_for(self, predicate: Callable[[SeqCounter], bool], within: float) -> bool:
        """Wait (bounded) until ``predicate(counter)`` holds; False on timeout."""
        return await wait_until(lambda: predicate(self.counter), self._changed, within, self._check)

    def _check(self) -> None:
        if self.error is not None:
            raise ConsumerError(f"consumer stopped: {self.error}") from self.error

    async def _read_loop(self) -> None:
        try:
            await self._read_frames()
        except Exception as exc:  # surfaced by wait_complete, not lost in a task
            self.error = exc
            self._changed.set()

    async def _read_frames(self) -> None:
        reader = self._reader
        assert reader is not None
        buf = b""
        routing_key = ""
        body_left = 0
        body_parts: list[bytes] = []
        head_unpack = _FRAME_HEAD.unpack_from
        u64 = _U64.unpack_from
        changed = self._changed
        while True:
            chunk = await reader.read(_READ)
            if not chunk:
                raise ConsumerError("the broker closed the connection")
            now_ms = time.time() * 1000.0  # one clock read per socket read, not per message
            buf = buf + chunk if buf else chunk
            pos = 0
            end = len(buf)
            counter = self.counter
            while end - pos >= 8:
                kind, _, size = head_unpack(buf, pos)
                stop = pos + 7 + size
                if stop >= end:
                    break
                start = pos + 7
                if kind == 3:  # body
                    body_parts.append(buf[start:stop])
                    body_left -= size
                    if body_left <= 0:
                        body = body_parts[0] if len(body_parts) == 1 else b"".join(body_parts)
                        body_parts = []
                        seq, ts = parse_seq_ts(body)
                        counter.add(routing_key, seq, ts, now_ms)
                elif kind == 2:  # content header: class, weight, body size
                    (body_left,) = u64(buf, start + 4)
                elif kind == 1:
                    if buf[start : start + 4] != _DELIVER:
                        _, _, value = pframe.unmarshal(buf[pos : stop + 1])
                        raise ConsumerError(f"unexpected method from the broker: {value!r}")
                    p = start + 4
                    p += 1 + buf[p]  # consumer tag
                    p += 8 + 1  # delivery tag, redelivered
                    p += 1 + buf[p]  # exchange
                    n = buf[p]
                    routing_key = buf[p + 1 : p + 1 + n].decode()
                pos = stop + 1
            buf = buf[pos:]
            changed.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
