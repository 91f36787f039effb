"""Replay positions in RabbitMQ (``BRIDGE_COORDINATION=rabbitmq``): one last-value queue per
endpoint, shared by every replica.

The queue (``cometd-bridge.positions.<endpoint>``, durable, ``x-max-length: 1``: the broker
drops the older message when a new one arrives) holds one persistent message, the JSON
document ``{"epoch": N, "positions": {channel: {"replay_id", "updated_at", "event_time"}}}``.
It is written with publisher confirms, only by the endpoint's lease holder, on the connection
that holds the lease; it is read with ``basic.get`` and returned unacked (``nack`` with
requeue), so reading never removes it.

``epoch`` is the lease epoch: each new owner reads the document, increments the epoch and
writes it back (confirmed) before it subscribes; its messages carry that epoch in the
``cometd-lease-epoch`` header.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Final

import aiormq.abc
from pamqp import commands as spec

from bridge.positions.store import PositionStore, PositionStoreError, StoredPosition


__all__ = [
    "POSITION_QUEUE_ARGUMENTS",
    "LeasedPositionStore",
    "position_queue",
    "read_positions",
    "write_positions",
]

POSITION_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {"x-max-length": 1}


def position_queue(endpoint: str) -> str:
    """The name of ``endpoint``'s positions queue."""
    return f"cometd-bridge.positions.{endpoint}"


async def declare(channel: aiormq.abc.AbstractChannel, endpoint: str) -> None:
    await channel.queue_declare(
        position_queue(endpoint), durable=True, arguments=POSITION_QUEUE_ARGUMENTS
    )


async def read_positions(
    channel: aiormq.abc.AbstractChannel, endpoint: str
) -> tuple[int, dict[str, StoredPosition]]:
    """``(epoch, positions)`` as stored; ``(0, {})`` when nothing was stored yet.

    Raises :class:`PositionStoreError` when the stored document cannot be trusted (the
    endpoint then needs an operator: ``cometd-bridge positions set|clear``).
    """
    await declare(channel, endpoint)
    got = await channel.basic_get(position_queue(endpoint), no_ack=False)
    if not isinstance(got.delivery, spec.Basic.GetOk):
        return 0, {}
    tag = got.delivery.delivery_tag
    try:
        return parse_document(got.body)
    finally:
        if tag is not None:
            await channel.basic_nack(tag, requeue=True)


def parse_document(body: bytes) -> tuple[int, dict[str, StoredPosition]]:
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("top level is not an object")
        epoch = doc.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch {epoch!r} is not a non-negative integer")
        raw = doc.get("positions")
        if not isinstance(raw, dict):
            raise ValueError("positions is not an object")
        positions = {str(ch): StoredPosition.from_json(entry) for ch, entry in raw.items()}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PositionStoreError(f"stored positions in RabbitMQ are corrupt: {exc}") from exc
    return epoch, positions


def render_document(epoch: int, positions: Mapping[str, StoredPosition]) -> bytes:
    return json.dumps(
        {
            "epoch": epoch,
            "positions": {ch: p.to_json() for ch, p in sorted(positions.items())},
        },
        sort_keys=True,
    ).encode()


async def write_positions(
    channel: aiormq.abc.AbstractChannel,
    endpoint: str,
    epoch: int,
    positions: Mapping[str, StoredPosition],
    *,
    confirm_within: float = 10.0,
) -> None:
    """Replace the stored document; returns once the broker confirmed it (``channel`` must
    have publisher confirms on). Raises :class:`PositionStoreError` otherwise."""
    properties = spec.Basic.Properties(
        delivery_mode=2, content_type="application/json", headers={"cometd-lease-epoch": epoch}
    )
    try:
        confirm = await asyncio.wait_for(
            channel.basic_publish(
                render_document(epoch, positions),
                routing_key=position_queue(endpoint),
                properties=properties,
            ),
            confirm_within,
        )
    except Exception as exc:
        raise PositionStoreError(f"positions not written to RabbitMQ: {exc!r}") from exc
    if not isinstance(confirm, spec.Basic.Ack):
        raise PositionStoreError(f"positions not confirmed by RabbitMQ: {confirm!r}")


class LeasedPositionStore(PositionStore):
    """The :class:`PositionStore` a :class:`~bridge.positions.PositionKeeper` uses while this
    replica holds the endpoint's lease: ``load`` returns what the new owner read at acquisition,
    ``save`` writes through ``write`` (on the event loop, confirmed; the keeper calls it from a
    thread, as it does the file store's)."""

    def __init__(
        self,
        endpoint: str,
        initial: Mapping[str, StoredPosition],
        write: Callable[[dict[str, StoredPosition]], Coroutine[Any, Any, None]],
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(Path("."))
        self._endpoint = endpoint
        self._initial = dict(initial)
        self._write = write
        self._loop = loop
        self._timeout = timeout

    def path(self, endpoint: str) -> Path:
        return Path(f"amqp:{position_queue(endpoint)}")

    def endpoints(self, *, with_corrupt_copies: bool = False) -> list[str]:
        return [self._endpoint]

    def exists(self, endpoint: str) -> bool:
        return True

    def corrupt_copies(self, endpoint: str) -> list[Path]:
        return []

    def read(self, endpoint: str) -> dict[str, StoredPosition]:
        return dict(self._initial)

    def load(self, endpoint: str) -> dict[str, StoredPosition]:
        return dict(self._initial)

    def save(self, endpoint: str, positions: Mapping[str, StoredPosition]) -> None:
        future = asyncio.run_coroutine_threadsafe(self._write(dict(positions)), self._loop)
        try:
            future.result(self._timeout + 1.0)
        except PositionStoreError:
            raise
        except Exception as exc:
            future.cancel()
            raise PositionStoreError(f"positions not written to RabbitMQ: {exc!r}") from exc

    def update(self, endpoint: str, channel: str, position: StoredPosition | None) -> None:
        raise PositionStoreError("positions in RabbitMQ are changed by their lease holder only")
