"""Replicas of the bridge (``BRIDGE_COORDINATION=rabbitmq``) for the HA tests: bridge
processes sharing one configuration against a Salesforce-like server, each with its own
replica id and state directory.

The lease and positions queues are shared by endpoint name across replicas, so a test names
its endpoints uniquely (never shared across tests) and they are deleted once its replicas
stopped.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika

from bridge.amqp.lease import lease_queue
from bridge.positions.rabbitmq_store import position_queue
from tests.e2e.harness import BridgeProcess


__all__ = ["Replicas", "delete_coordination_queues", "replica_group", "wait_role"]


class Replicas:
    """Bridge processes with the same configuration, each named by its replica id."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self._tmp = tmp_path
        self._env = env
        self.started: dict[str, BridgeProcess] = {}

    async def start(self, replica: str, **extra: str) -> BridgeProcess:
        env = {
            **self._env,
            **extra,
            "BRIDGE_COORDINATION": "rabbitmq",
            "BRIDGE_REPLICA_ID": replica,
            "BRIDGE_STATE_DIR": str(self._tmp / f"state-{replica}"),
        }
        bridge = BridgeProcess(env=env, log_path=self._tmp / f"{replica}.log")
        bridge.start()
        self.started[replica] = bridge
        await bridge.wait_ready()
        return bridge

    def stop_all(self) -> None:
        for bridge in self.started.values():
            bridge.stop()


async def delete_coordination_queues(amqp_url: str, endpoints: list[str]) -> None:
    """Delete the endpoints' lease and positions queues (durable: nothing else would)."""
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        for name in endpoints:
            for queue in (lease_queue(name), position_queue(name)):
                with contextlib.suppress(Exception):
                    if channel.is_closed:  # a failed delete closes the channel it ran on
                        channel = await conn.channel()
                    await channel.queue_delete(queue)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def replica_group(
    amqp_url: str, tmp_path: Path, env: dict[str, str], endpoints: list[str]
) -> AsyncIterator[Replicas]:
    """Replicas (none started yet) with ``env``'s one endpoint configured under each name in
    ``endpoints``; stopped, and those endpoints' lease and positions queues deleted, at the
    end."""
    (config,) = json.loads(env["BRIDGE_ENDPOINTS"]).values()
    group = Replicas(
        tmp_path, {**env, "BRIDGE_ENDPOINTS": json.dumps(dict.fromkeys(endpoints, config))}
    )
    try:
        yield group
    finally:
        group.stop_all()
        await delete_coordination_queues(amqp_url, endpoints)


async def wait_role(bridge: BridgeProcess, endpoint: str, role: str, within: float) -> float:
    """Wait until ``bridge`` reports ``role`` for ``endpoint``; returns when (monotonic)."""
    await bridge.wait_status(lambda s: s["endpoints"][endpoint]["role"] == role, within=within)
    return time.monotonic()
