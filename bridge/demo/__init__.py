"""The embedded demo CometD source (a small Bayeux server publishing realistic events)."""

from __future__ import annotations

from bridge.demo.bayeux_server import BayeuxServer, Exchange, Session
from bridge.demo.events import ACCOUNT_CHANNEL, DEFAULT_CHANNELS, ORDER_CHANNEL, EventFactory
from bridge.demo.source import DemoSource


__all__ = [
    "DemoSource",
    "BayeuxServer",
    "Exchange",
    "Session",
    "EventFactory",
    "ORDER_CHANNEL",
    "ACCOUNT_CHANNEL",
    "DEFAULT_CHANNELS",
]
