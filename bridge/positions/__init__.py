"""Durable replay positions: what the broker has, per endpoint and channel.

One job per module:

- ``watermark.py`` :class:`ContiguousWatermark` (pure, no I/O): the highest replay id such
  that every message received before it has been confirmed by the broker. It never moves past
  an unconfirmed message, so resuming from it can only repeat messages, never skip one.
- ``store.py`` :class:`PositionStore` (blocking file I/O): one JSON file per endpoint under
  the state directory, replaced atomically (write new, fsync, rename, fsync the directory).
- ``keeper.py`` :class:`PositionKeeper` (asyncio): one endpoint's watermarks plus the store;
  it flushes at most every ``flush_every`` confirmed messages or ``flush_interval`` seconds,
  and always on :meth:`PositionKeeper.close`.
- ``lock.py``: the state directory's lock (one writer at a time).
- ``cli.py``: ``cometd-bridge positions show | set | clear``.
"""

from __future__ import annotations

from bridge.positions.keeper import PositionKeeper
from bridge.positions.store import (
    CorruptPositionFile,
    PositionStore,
    PositionStoreError,
    StoredPosition,
)
from bridge.positions.watermark import ContiguousWatermark


__all__ = [
    "ContiguousWatermark",
    "StoredPosition",
    "PositionStore",
    "PositionKeeper",
    "PositionStoreError",
    "CorruptPositionFile",
]
