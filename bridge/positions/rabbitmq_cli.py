"""``cometd-bridge positions show|set|clear`` with ``BRIDGE_COORDINATION=rabbitmq``: the
positions live in RabbitMQ (:mod:`bridge.positions.rabbitmq_store`).

``show`` reads them (never removes them). ``set`` and ``clear`` first take the endpoint's
lease like a replica would, so no replica streams the endpoint while the position changes:
they wait (up to ``--wait`` seconds) while a replica holds it, e.g. until the replicas are
scaled down. The change is written with the epoch incremented, as by any new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import aiormq

from bridge.amqp.lease import Lease
from bridge.positions.rabbitmq_store import read_positions, write_positions
from bridge.positions.store import PositionStore, StoredPosition


__all__ = ["LeaseBusy", "amqp_url_of", "endpoints_of", "run_rabbitmq"]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LEASE_WAIT = 30.0


class LeaseBusy(Exception):
    """A replica holds the endpoint's lease: its position cannot be changed now."""


def amqp_url_of(env: Mapping[str, str]) -> str:
    """The first of ``BRIDGE_AMQP_URL``'s comma-separated URLs (or its ``_FILE``)."""
    raw = env.get("BRIDGE_AMQP_URL")
    path = env.get("BRIDGE_AMQP_URL_FILE")
    if not raw and path:
        raw = Path(path).read_text().strip()
    return (raw or DEFAULT_AMQP_URL).split(",")[0].strip()


def endpoints_of(env: Mapping[str, str]) -> list[str]:
    """The endpoint names of ``BRIDGE_ENDPOINTS`` (JSON), for ``show`` without an endpoint."""
    with contextlib.suppress(ValueError, AttributeError):
        return sorted(json.loads(env.get("BRIDGE_ENDPOINTS", "{}")))
    return []


async def show_rows(url: str, endpoints: list[str], now: float) -> list[dict[str, Any]]:
    conn = await aiormq.connect(url)
    try:
        channel = await conn.channel()
        rows: list[dict[str, Any]] = []
        for name in endpoints:
            epoch, positions = await read_positions(channel, name)
            for ch, pos in sorted(positions.items()):
                rows.append(
                    {
                        "endpoint": name,
                        "channel": ch,
                        "replay_id": pos.replay_id,
                        "updated_at": time.strftime(
                            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(pos.updated_at)
                        ),
                        "age_seconds": round(max(0.0, now - pos.updated_at), 3),
                        "event_time": pos.event_time,
                        "lease_epoch": epoch,
                    }
                )
        return rows
    finally:
        await conn.close()


async def change(
    url: str, endpoint: str, channel: str, replay_id: int | None, *, wait: float = LEASE_WAIT
) -> int:
    """Set (or with None, clear) one channel's position under the endpoint's lease; returns
    the new epoch. Raises :class:`LeaseBusy` if the lease is not free within ``wait``."""
    conn = await aiormq.connect(url, client_properties={"connection_name": "cometd-bridge cli"})
    lease = Lease(endpoint)
    try:
        await lease.enter(conn)
        try:
            async with asyncio.timeout(wait):
                await lease.acquired.wait()
        except TimeoutError:
            raise LeaseBusy(
                f"a replica streams {endpoint} (holds its lease); waited {wait:.0f} s"
            ) from None
        positions_channel = await conn.channel(publisher_confirms=True)
        epoch, positions = await read_positions(positions_channel, endpoint)
        if replay_id is None:
            if channel not in positions:
                raise ValueError(f"{endpoint} has no stored position for {channel}")
            positions.pop(channel)
        else:
            positions[channel] = StoredPosition(replay_id, time.time())
        if not lease.held:
            raise LeaseBusy(f"the lease of {endpoint} was lost before the change")
        await write_positions(positions_channel, endpoint, epoch + 1, positions)
        return epoch + 1
    finally:
        await lease.release()
        await conn.close()


def run_rabbitmq(args: Any, env: Mapping[str, str], out: IO[str], print_rows: Any) -> int:
    """The ``positions`` command in rabbitmq mode; ``print_rows(store, rows, out, as_json)``
    prints like the file mode does."""
    url = amqp_url_of(env)
    command = args.positions_command
    if command == "show":
        endpoints = [args.endpoint] if args.endpoint else endpoints_of(env)
        rows = asyncio.run(show_rows(url, endpoints, time.time()))
        print_rows(PositionStore(Path("RabbitMQ")), rows, out, args.json)
        return 0
    replay_id = args.replay_id if command == "set" else None
    epoch = asyncio.run(change(url, args.endpoint, args.channel, replay_id))
    what = f"replay id set to {replay_id}" if command == "set" else "position cleared"
    print(f"{args.endpoint} {args.channel}: {what} (lease epoch {epoch})", file=out)
    return 0
