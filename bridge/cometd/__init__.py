"""An asyncio CometD (Bayeux) client with aiocometd's documented API.

``from bridge.cometd import Client, ConnectionType`` replaces ``from aiocometd import ...``;
``bridge.cometd.exceptions`` replaces ``aiocometd.exceptions``. This package imports nothing
from the rest of ``bridge``.
"""

from __future__ import annotations

from . import events, exceptions
from .client import Client, ClientState
from .exceptions import (
    AiocometdException,
    ClientError,
    ClientInvalidOperation,
    CometdError,
    ServerError,
    TransportConnectionClosed,
    TransportError,
    TransportInvalidOperation,
    TransportTimeoutError,
)
from .extensions import AuthExtension, Extension
from .protocol import ConnectionType


__all__ = [
    "Client",
    "ConnectionType",
    "Extension",
    "AuthExtension",
    "ClientState",
    "events",
    "exceptions",
    "CometdError",
    "AiocometdException",
    "ClientError",
    "ClientInvalidOperation",
    "TransportError",
    "TransportInvalidOperation",
    "TransportTimeoutError",
    "TransportConnectionClosed",
    "ServerError",
]
