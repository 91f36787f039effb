"""The client's transports and the path of every payload through the extensions.

Outgoing payloads pass the extensions, then auth; incoming ones are screened first (events on
channels not subscribed to are dropped), then pass auth, then the extensions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, MutableMapping

from .buffer import PrefetchBuffer
from .exceptions import ClientInvalidOperation
from .extensions import Extension
from .losses import LostResponses
from .protocol import ConnectionType, Message, channel_matches, is_event
from .transports import Transport, TransportConfig, TransportHooks, create_transport


__all__ = ["TransportWiring"]


#: The client's one logger, whichever of its modules logs (operators filter on this name).
log = logging.getLogger("bridge.cometd.client")


class TransportWiring(PrefetchBuffer, LostResponses):
    """Transports, their hooks, and the extension pipeline of the client."""

    async def _outgoing(self, payload: list[Message], headers: MutableMapping[str, str]) -> None:
        for extension in self.extensions:
            await extension.outgoing(payload, headers)
        if self.auth is not None:
            await self.auth.outgoing(payload, headers)

    async def _incoming(self, payload: list[Message], headers: Mapping[str, str] | None) -> None:
        self._screen(payload)
        if self.auth is not None:
            await self._extension_incoming(self.auth, payload, headers)
        for extension in self.extensions:
            await self._extension_incoming(extension, payload, headers)

    async def _extension_incoming(
        self, extension: Extension, payload: list[Message], headers: Mapping[str, str] | None
    ) -> None:
        try:
            await extension.incoming(payload, headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            # An extension's bug must neither kill the client task nor drop the payload.
            log.exception("CometD extension %s failed on an incoming payload", extension)

    def _screen(self, payload: list[Message]) -> None:
        """Drop events on channels this session did not subscribe to (reported, never
        delivered), before any extension (an ack must not wait for them)."""
        if not self._only_subscribed:
            return
        keep: list[Message] | None = None
        for index, message in enumerate(payload):
            if is_event(message) and not self._subscribed_to(message["channel"]):
                if keep is None:
                    keep = payload[:index]
                self._on_skipped("unsubscribed_channel", str(message["channel"])[:200])
            elif keep is not None:
                keep.append(message)
        if keep is not None:
            payload[:] = keep

    def _subscribed_to(self, channel: str) -> bool:
        if channel in self._subscriptions or channel in self._subscribing:
            return True
        bare = channel.split("?", 1)[0]
        return any(
            channel_matches(pattern.split("?", 1)[0], bare)
            for pattern in (*self._subscriptions, *self._subscribing)
        )

    def _get_transport(self, connection_type: ConnectionType) -> Transport:
        transport = self._transports.get(connection_type)
        if transport is None:
            if self._session is None:
                raise ClientInvalidOperation("The client is not open.")
            config = TransportConfig(
                url=self.url,
                session=self._session,
                json_dumps=self._json_dumps,
                json_loads=self._json_loads,
                max_message_size=self._max_message_size,
                max_response_size=self._max_response_size,
                max_frame_size=self._max_frame_size,
                network_delay=self._network_delay,
                heartbeat=self._heartbeat,
                headers=self._headers,
                ssl=True if self.ssl is None else self.ssl,
            )
            on_skipped = (
                self._on_websocket_skipped
                if connection_type is ConnectionType.WEBSOCKET
                else self._on_skipped
            )
            hooks = TransportHooks(
                self._outgoing,
                self._incoming,
                self._deliver,
                on_skipped,
                self._admits,
                self._wait_room,
                self._response_done,
            )
            transport = create_transport(connection_type, config, hooks)
            self._transports[connection_type] = transport
        return transport
