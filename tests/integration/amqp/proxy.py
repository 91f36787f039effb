"""A TCP proxy in front of RabbitMQ that can black-hole its live connections.

A black hole (bytes swallowed, sockets left open) is the fault a real broker cannot produce:
no RST, no close, just silence, as with a dead NAT entry or a partitioned network.
Connections accepted after :meth:`blackhole` pass normally, so the client can recover.
"""

from __future__ import annotations

import asyncio
import contextlib


class BlackholeProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._live: list[asyncio.Event] = []  # one "swallow" switch per accepted connection
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> int:
        """Silence every connection open now; return how many."""
        for switch in self._live:
            switch.set()
        n = len(self._live)
        self._live = []
        return n

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers += [writer, up_writer]
        switch = asyncio.Event()
        self._live.append(switch)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, switch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, switch: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if not switch.is_set():
                    dst.write(data)
                    await dst.drain()
        if not switch.is_set():
            dst.close()
