"""Long-polling over aiohttp POST.

The held ``/meta/connect`` and other requests run on separate pooled connections of the one
client session, so a publish or subscribe never queues behind the poll (Bayeux: two
connections, no pipelining; aiohttp never pipelines).
"""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from ..exceptions import HTTPStatusError, MalformedResponseError
from ..protocol import ConnectionType, Message, split_replies
from .base import Transport, decode_payload, map_exceptions, read_capped


__all__ = ["LongPollingTransport"]

_OK = 200
_JSON_TYPES = ("json", "javascript")


class LongPollingTransport(Transport):
    """One POST per payload; the response holds the replies and any queued events."""

    connection_type: ClassVar[ConnectionType] = ConnectionType.LONG_POLLING

    async def send(self, payload: list[Message], *, deadline: float) -> dict[str, Message]:
        config = self.config
        headers: dict[str, str] = dict(config.headers)
        headers["Content-Type"] = "application/json;charset=UTF-8"
        await self.hooks.outgoing(payload, headers)
        data = config.json_dumps(payload)
        with map_exceptions():
            async with config.session.post(
                config.url,
                data=data,
                headers=headers,
                ssl=config.ssl,
                timeout=aiohttp.ClientTimeout(total=deadline),
            ) as response:
                if response.status != _OK:
                    raise HTTPStatusError(response.status, response.reason or "")
                content_type = response.content_type
                if not any(kind in content_type for kind in _JSON_TYPES):
                    raise MalformedResponseError(f"unexpected content type {content_type!r}")
                raw = await read_capped(response, config.max_response_size)
                response_headers = response.headers
        try:
            body = raw.decode(response.charset or "utf-8")
        except (UnicodeDecodeError, LookupError) as exc:
            self.hooks.on_skipped("invalid_json", f"undecodable body: {exc}")
            raise MalformedResponseError(f"response is not text: {exc}") from None
        messages = decode_payload(body, config, self.hooks)
        await self.hooks.incoming(messages, response_headers)
        replies, rest = split_replies(payload, messages)
        if rest:
            self.hooks.on_messages(rest, len(raw) // len(messages))
        return replies

    async def close(self) -> None:
        # The session belongs to the client, which closes it.
        return None
