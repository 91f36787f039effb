"""Long-polling over aiohttp POST, the response decoded as it streams in.

The held ``/meta/connect`` and other requests run on separate pooled connections of the one
client session, so a publish or subscribe never queues behind the poll (Bayeux: two
connections, no pipelining; aiohttp never pipelines).

A response is read in chunks and split into messages as they arrive; while the client's buffer
is full nothing more is read, so the rest of a large response stays in the socket (TCP
back-pressure holds it at the server) and memory stays bounded whatever the server queued.
The response then simply takes longer to complete: the deadline is the longest wait for the
server's next bytes (the headers, then each chunk), never the total, and the time spent waiting
for the application is not counted. ``send`` returns only once the response is complete, so
the next ``/meta/connect`` is sent after it.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

import aiohttp

from ..exceptions import HTTPStatusError, MalformedResponseError
from ..payload_stream import PayloadStream, PayloadStreamError
from ..protocol import META_CONNECT, ConnectionType, Message, split_replies
from .base import Delivery, Transport, map_exceptions


__all__ = ["LongPollingTransport"]

_OK = 200
_JSON_TYPES = ("json", "javascript")
_UTF8 = ("utf-8", "utf8")
_CHUNK = 1 << 16


class LongPollingTransport(Transport):
    """One POST per payload; the response holds the replies and any queued events."""

    connection_type: ClassVar[ConnectionType] = ConnectionType.LONG_POLLING

    async def send(self, payload: list[Message], *, deadline: float) -> dict[str, Message]:
        config = self.config
        headers: dict[str, str] = dict(config.headers)
        headers["Content-Type"] = "application/json;charset=UTF-8"
        await self.hooks.outgoing(payload, headers)
        data = config.json_dumps(payload)
        try:
            return await self._exchange(payload, data, headers, deadline)
        finally:
            self.hooks.response_done()

    async def _exchange(
        self, payload: list[Message], data: str, headers: dict[str, str], deadline: float
    ) -> dict[str, Message]:
        config = self.config
        with map_exceptions():
            async with asyncio.timeout(deadline):
                response = await config.session.post(
                    config.url,
                    data=data,
                    headers=headers,
                    ssl=config.ssl,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=deadline),
                )
            async with response:
                if response.status != _OK:
                    raise HTTPStatusError(response.status, response.reason or "")
                content_type = response.content_type
                if not any(kind in content_type for kind in _JSON_TYPES):
                    raise MalformedResponseError(f"unexpected content type {content_type!r}")
                charset = (response.charset or "utf-8").lower()
                if charset not in _UTF8:
                    raise MalformedResponseError(f"unsupported charset {charset!r}")
                replies: dict[str, Message] = {}

                def route(messages: list[Message]) -> list[Message]:
                    matched, rest = split_replies(payload, messages)
                    replies.update(matched)
                    return rest

                # Only the /meta/connect response waits for room: a publish or subscribe the
                # application awaits must not wait for the application to consume (servers
                # put at most a few queued messages there; the poll takes the queue).
                polls = any(m.get("channel") == META_CONNECT for m in payload)
                delivery = Delivery(self.hooks, route, response.headers, may_wait=polls)
                stream = PayloadStream(config.max_message_size, config.json_loads)
                content = response.content
                while True:
                    async with asyncio.timeout(deadline):  # time without progress
                        chunk = await content.read(_CHUNK)
                    if not chunk:
                        break
                    stream.feed(chunk)
                    await delivery.take(stream)
                try:
                    stream.close()
                except PayloadStreamError as exc:
                    self.hooks.on_skipped(exc.reason, str(exc)[:260])
                    raise MalformedResponseError(f"response is not JSON: {exc}") from None
                await delivery.flush()
        return replies

    async def close(self) -> None:
        # The session belongs to the client, which closes it.
        return None
