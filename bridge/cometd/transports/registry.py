"""Maps a connection type to its transport class."""

from __future__ import annotations

from ..protocol import ConnectionType
from .base import Transport, TransportConfig, TransportHooks
from .long_polling import LongPollingTransport
from .websocket import WebSocketTransport


__all__ = ["TRANSPORTS", "create_transport"]

TRANSPORTS: dict[ConnectionType, type[Transport]] = {
    ConnectionType.LONG_POLLING: LongPollingTransport,
    ConnectionType.WEBSOCKET: WebSocketTransport,
}


def create_transport(
    connection_type: ConnectionType, config: TransportConfig, hooks: TransportHooks
) -> Transport:
    """A new transport of ``connection_type`` sharing ``config`` (session, cookie jar)."""
    return TRANSPORTS[connection_type](config, hooks)
