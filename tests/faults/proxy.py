"""A fault-injecting TCP proxy for the fault tests and the chaos run.

It sits between the bridge and a real server (a CometD server over HTTP long-polling or
WebSocket, or RabbitMQ) and does to the traffic what real networks do, switchable while traffic
flows:

- **cut**: hold the next server response (an HTTP response, or a WebSocket frame) that carries
  events (``"data"`` in its body), forward only part of it, then reset both sockets. The server
  wrote the whole response, so it believes the events were delivered: only the client can notice
  they were not.
- **reset**: TCP RST on both sides of every open connection (now, or after N more bytes).
- **delay**: latency added to every chunk, per direction.
- **stall**: stop forwarding in both directions (a blackhole: sockets stay open, nothing moves)
  until ``resume()``.
- **throttle**: a byte rate per direction.

Faults are counted as they actually land (``proxy.counters``), so a test asserts the fault hit
before it asserts nothing was lost. Hand-written on asyncio rather than Toxiproxy: Toxiproxy
cannot recognise a response that carries events (its ``limit_data`` cuts after N bytes of the
stream, wherever they fall), it is a separate Go binary and server to manage, and what is needed
here is about 400 lines.

Server-to-client traffic is framed (HTTP/1.1 responses, then WebSocket frames after a 101) and
forwarded one whole response or frame at a time, so a cut always knows what it is cutting.
``framing="raw"`` (e.g. in front of RabbitMQ) forwards bytes as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit


Framing = Literal["http", "raw"]
UPSTREAM, DOWNSTREAM = "upstream", "downstream"  # client -> server, server -> client

_READ_SIZE = 65536
_CUT_GRACE = 0.05  # seconds the partial response sits in the client's socket before the reset
_SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')


class ProxyProtocolError(Exception):
    """The server's bytes are not the HTTP/WebSocket the framer expects."""


@dataclass
class CutReport:
    """What one cut did: which kind of message, how much of it reached the client."""

    kind: Literal["http", "websocket"]
    size: int  # bytes of the message's body (HTTP) or payload (WebSocket frame)
    forwarded: int  # of which the client received this many
    seqs: list[int]  # the ``"seq"`` values inside it: events the server believes delivered
    # ``"seq"`` values the server wrote after it into the same connection before the reset
    # (WebSocket pushes): also lost on the wire
    trailing_seqs: list[int] = field(default_factory=list)
    at: float = field(default_factory=time.time)


@dataclass
class _CutRule:
    after_bytes: int | None
    done: asyncio.Future[CutReport]


# -- framing of the server's bytes -----------------------------------------------------------


@dataclass
class _Message:
    raw: bytes  # the bytes exactly as the server sent them
    body_start: int  # offset of the body/payload in ``raw``
    kind: Literal["http", "websocket", "raw"]

    @property
    def body(self) -> bytes:
        return self.raw[self.body_start :]

    @property
    def carries_data(self) -> bool:
        return self.kind != "raw" and b'"data"' in self.body


class _DownstreamFramer:
    """Splits a server's byte stream into whole HTTP responses, then WebSocket frames.

    Incremental: ``feed`` returns the messages completed so far and keeps the rest. A response
    with no length (read until close) or bytes it cannot parse switch it to pass-through.
    """

    def __init__(self, framing: Framing) -> None:
        self._buf = bytearray()
        self._mode: Literal["http", "websocket", "raw"] = "raw" if framing == "raw" else "http"

    def feed(self, data: bytes) -> list[_Message]:
        self._buf += data
        out: list[_Message] = []
        while self._buf:
            if self._mode == "raw":
                out.append(_Message(bytes(self._buf), 0, "raw"))
                self._buf.clear()
                break
            try:
                message = self._http() if self._mode == "http" else self._websocket()
            except ProxyProtocolError:
                self._mode = "raw"
                continue
            if message is None:
                break
            out.append(message)
        return out

    def _http(self) -> _Message | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > 65536 or not b"HTTP/1."[: len(self._buf)].startswith(
                bytes(self._buf[:7])
            ):
                raise ProxyProtocolError("not an HTTP response")
            return None
        head = bytes(self._buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProxyProtocolError(f"not an HTTP status line: {lines[0]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body_start = end + 4
        if status == 101:
            self._mode = "websocket"
            return self._take(body_start, body_start, "http")
        if 100 <= status < 200 or status in (204, 304):
            return self._take(body_start, body_start, "http")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = self._chunked_end(body_start)
            return None if total is None else self._take(total, body_start, "http")
        if "content-length" in headers:
            total = body_start + int(headers["content-length"])
            return None if len(self._buf) < total else self._take(total, body_start, "http")
        raise ProxyProtocolError("a response without a length: read until close")

    def _chunked_end(self, pos: int) -> int | None:
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProxyProtocolError(f"bad chunk size {size_text!r}") from None
            pos = eol + 2
            if size == 0:
                while True:  # trailers, then an empty line
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        return None
                    if eol == pos:
                        return eol + 2
                    pos = eol + 2
            if len(buf) < pos + size + 2:
                return None
            pos += size + 2

    def _websocket(self) -> _Message | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        length = buf[1] & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = struct.unpack(">H", buf[2:4])[0]
            pos = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length = struct.unpack(">Q", buf[2:10])[0]
            pos = 10
        if buf[1] & 0x80:
            pos += 4  # a mask key (servers do not mask, but frame it correctly anyway)
        if len(buf) < pos + length:
            return None
        return self._take(pos + length, pos, "websocket")

    def pending(self) -> bytes:
        """Bytes received but not yet a whole message."""
        return bytes(self._buf)

    def _take(self, end: int, body_start: int, kind: Literal["http", "websocket"]) -> _Message:
        raw = bytes(self._buf[:end])
        del self._buf[:end]
        return _Message(raw, body_start, kind)


# -- the proxy -------------------------------------------------------------------------------


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client's socket and the server's."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        self.framer = _DownstreamFramer(proxy.framing)
        self.closed = False
        self.reset_after: dict[str, int] = {}  # direction -> bytes left before a reset

    def reset(self) -> None:
        if not self.closed:
            self.closed = True
            _reset(self.client_writer)
            _reset(self.server_writer)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client_writer.close()
            self.server_writer.close()

    async def run(self) -> None:
        up = asyncio.create_task(self._pump_up())
        down = asyncio.create_task(self._pump_down())
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            self.close()

    async def _pump_up(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await self.server_bound_read():
                await self._send(UPSTREAM, self.server_writer, data)

    async def server_bound_read(self) -> bytes:
        return await self.client_reader.read(_READ_SIZE)

    async def _pump_down(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await self.server_reader.read(_READ_SIZE):
                messages = self.framer.feed(data)
                for i, message in enumerate(messages):
                    rule = self.proxy.take_cut_rule(message)
                    if rule is not None:
                        await self._cut(message, rule, b"".join(m.raw for m in messages[i + 1 :]))
                        return
                    await self._send(DOWNSTREAM, self.client_writer, message.raw)
                    if self.closed:
                        return

    async def _cut(self, message: _Message, rule: _CutRule, following: bytes) -> None:
        body = message.body
        keep = len(body) // 2 if rule.after_bytes is None else rule.after_bytes
        keep = max(0, min(keep, len(body) - 1))  # always short of the whole message
        await self.proxy.gate(DOWNSTREAM, len(message.raw))
        self.client_writer.write(message.raw[: message.body_start + keep])
        with contextlib.suppress(ConnectionError, OSError):
            await self.client_writer.drain()
        # Let the client read the partial body and wait for the rest before the reset lands.
        # Whatever the server writes meanwhile (more WebSocket frames) goes into the dead
        # connection too: it is read here so the report names it.
        trailing = bytearray(following + self.framer.pending())
        deadline = asyncio.get_running_loop().time() + _CUT_GRACE
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                data = await asyncio.wait_for(self.server_reader.read(_READ_SIZE), left)
                if not data:
                    break
                trailing += data
        self.reset()
        report = CutReport(
            kind="websocket" if message.kind == "websocket" else "http",
            size=len(body),
            forwarded=keep,
            seqs=[int(s) for s in _SEQ.findall(body)],
            trailing_seqs=[int(s) for s in _SEQ.findall(bytes(trailing))],
        )
        self.proxy.count("cuts")
        self.proxy.cuts.append(report)
        if not rule.done.done():
            rule.done.set_result(report)

    async def _send(self, direction: str, writer: asyncio.StreamWriter, data: bytes) -> None:
        left = self.reset_after.get(direction)
        if left is not None and len(data) >= left:
            writer.write(data[:left])
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            self.proxy.count("resets")
            self.reset()
            return
        if left is not None:
            self.reset_after[direction] = left - len(data)
        await self.proxy.gate(direction, len(data))
        if self.closed:
            return
        writer.write(data)
        await writer.drain()
        self.proxy.counters[f"bytes_{direction}"] += len(data)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_host:upstream_port``.

    Use as ``async with FaultProxy(host, port) as proxy:``; point the client at ``proxy.port``
    (``proxy.url_for(server_url)`` rewrites a URL). Every fault method is safe to call while
    traffic flows.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, framing: Framing = "http"):
        self.upstream = (upstream_host, upstream_port)
        self.framing = framing
        self.port = 0
        self.counters: dict[str, int] = {
            "connections": 0,
            "cuts": 0,
            "resets": 0,
            "stalls": 0,
            "bytes_upstream": 0,
            "bytes_downstream": 0,
        }
        self.cuts: list[CutReport] = []
        self._counted = asyncio.Event()
        self._links_changed = asyncio.Event()
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._cut_rules: list[_CutRule] = []
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._delay = {UPSTREAM: 0.0, DOWNSTREAM: 0.0}
        self._rate: dict[str, float | None] = {UPSTREAM: None, DOWNSTREAM: None}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            link.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for rule in self._cut_rules:
            rule.done.cancel()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        netloc = f"127.0.0.1:{self.port}"
        if parts.username:
            creds = parts.username + (f":{parts.password}" if parts.password else "")
            netloc = f"{creds}@{netloc}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def open_connections(self) -> int:
        return sum(1 for link in self._links if not link.closed)

    async def wait_connected(self, *, within: float = 30.0) -> bool:
        """Wait until at least one connection is open through the proxy (a client that was
        just cut off reconnects); False if none opened within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while self.open_connections == 0:
                    self._links_changed.clear()
                    await self._links_changed.wait()
        except TimeoutError:
            return False
        return True

    # -- faults --------------------------------------------------------------------------------

    def arm_cut(self, after_bytes: int | None = None) -> asyncio.Future[CutReport]:
        """Cut the next server message that carries events after ``after_bytes`` bytes of its
        body (default: half), then reset both sockets. Resolves with the :class:`CutReport`."""
        done: asyncio.Future[CutReport] = asyncio.get_running_loop().create_future()
        self._cut_rules.append(_CutRule(after_bytes, done))
        return done

    async def cut_next_response(
        self, after_bytes: int | None = None, *, within: float = 30.0
    ) -> CutReport:
        """Arm a cut and wait until it landed on a response carrying events."""
        done = self.arm_cut(after_bytes)
        try:
            return await asyncio.wait_for(asyncio.shield(done), within)
        except TimeoutError:
            done.cancel()
            raise AssertionError(
                f"no response carrying events passed the proxy within {within}s "
                f"(counters {self.counters})"
            ) from None

    def take_cut_rule(self, message: _Message) -> _CutRule | None:
        if not message.carries_data:
            return None
        while self._cut_rules:
            rule = self._cut_rules.pop(0)
            if not rule.done.done():  # skip rules whose waiter gave up
                return rule
        return None

    def reset_all(self) -> int:
        """TCP RST on every open connection now; returns how many were reset."""
        links = [link for link in self._links if not link.closed]
        for link in links:
            link.reset()
        self.count("resets", len(links))
        return len(links)

    def reset_after(self, nbytes: int, direction: str = DOWNSTREAM) -> int:
        """Reset every open connection once ``nbytes`` more bytes passed in ``direction``."""
        links = [link for link in self._links if not link.closed]
        for link in links:
            link.reset_after[direction] = nbytes
        return len(links)

    def stall(self) -> None:
        """Stop forwarding in both directions (connections stay open) until :meth:`resume`."""
        if self._flowing.is_set():
            self.count("stalls")
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def set_delay(self, seconds: float, direction: str | None = None) -> None:
        for d in (UPSTREAM, DOWNSTREAM) if direction is None else (direction,):
            self._delay[d] = seconds

    def set_throttle(self, bytes_per_second: float | None, direction: str | None = None) -> None:
        for d in (UPSTREAM, DOWNSTREAM) if direction is None else (direction,):
            self._rate[d] = bytes_per_second

    def heal(self) -> None:
        """Back to a clean link: no stall, delay, throttle, pending cut or pending reset."""
        self.resume()
        self.set_delay(0.0)
        self.set_throttle(None)
        for rule in self._cut_rules:
            rule.done.cancel()
        self._cut_rules.clear()
        for link in self._links:
            link.reset_after.clear()

    # -- counters ------------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n
        self._counted.set()

    async def wait_count(self, name: str, value: int, *, within: float = 30.0) -> None:
        """Wait until ``counters[name]`` reached ``value`` (a fault actually landed)."""
        try:
            async with asyncio.timeout(within):
                while self.counters[name] < value:
                    self._counted.clear()
                    await self._counted.wait()
        except TimeoutError:
            raise AssertionError(
                f"proxy counter {name} = {self.counters[name]}, expected {value} within "
                f"{within}s (counters {self.counters})"
            ) from None

    # -- internals -----------------------------------------------------------------------------

    async def gate(self, direction: str, size: int) -> None:
        """Apply stall, delay and throttle to ``size`` bytes about to be forwarded."""
        await self._flowing.wait()
        delay = self._delay[direction]
        rate = self._rate[direction]
        if rate:
            delay += size / rate
        if delay > 0:
            await asyncio.sleep(delay)
            await self._flowing.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)  # the server is down: the client sees a refused/reset connection
            return
        link = _Link(self, (reader, writer), server)
        self._links.add(link)
        self._links_changed.set()
        self.count("connections")
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            # Cancelled by close(): the end of this connection's handler task, nothing to report.
            with contextlib.suppress(asyncio.CancelledError):
                await link.run()
        finally:
            self._links.discard(link)
            self._links_changed.set()
            if task is not None:
                self._tasks.discard(task)
