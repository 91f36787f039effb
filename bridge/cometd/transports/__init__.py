"""Transports: thin aiohttp adapters that move Bayeux payloads; no protocol decisions here."""

from __future__ import annotations

from .base import Transport, TransportConfig, TransportHooks
from .registry import create_transport


__all__ = ["Transport", "TransportConfig", "TransportHooks", "create_transport"]
