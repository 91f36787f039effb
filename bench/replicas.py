"""Bridge replicas for the HA bench: ``python -m bridge run`` processes with one configuration
and ``BRIDGE_COORDINATION=rabbitmq``, each named by its replica id, started, killed and asked
(``/status``) which endpoints they stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

from bridge.amqp.lease import lease_queue
from bridge.positions.rabbitmq_store import position_queue
from tests.e2e.harness import BridgeProcess


__all__ = ["ReplicaGroup", "balanced", "delete_coordination_queues", "streaming"]

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
POLL = 0.2  # seconds between /status polls of another process (nothing to await)


def streaming(status: Any) -> set[str]:
    """The endpoints a replica's ``/status`` says it owns and streams (subscribed)."""
    return {
        name
        for name, ep in status["endpoints"].items()
        if ep.get("role") == "active" and ep.get("state") == "streaming"
    }


def balanced(owned: dict[str, set[str]], endpoints: list[str]) -> bool:
    """Every endpoint streamed by exactly one replica, and the replicas' shares within one."""
    everything = [e for names in owned.values() for e in names]
    counts = [len(names) for names in owned.values()]
    return (
        sorted(everything) == sorted(endpoints) and bool(counts) and max(counts) - min(counts) <= 1
    )


class ReplicaGroup:
    """Replicas of one configuration; a restarted replica keeps its id (a new process).

    ``coordination="file"`` runs one replica the default way (positions in its state
    directory, no lease): the reference the coordinated replicas are compared with."""

    def __init__(self, tmp: Path, env: dict[str, str], coordination: str = "rabbitmq") -> None:
        self._tmp = tmp
        self._env = env
        self._coordination = coordination
        self.live: dict[str, BridgeProcess] = {}

    def pid(self, replica: str) -> int:
        proc = self.live[replica].proc
        assert proc is not None
        return proc.pid

    async def start(self, replica: str) -> BridgeProcess:
        """Start ``replica`` and wait until it answers ``/readyz`` (a connected standby is
        ready too)."""
        env = {
            **self._env,
            "BRIDGE_COORDINATION": self._coordination,
            "BRIDGE_REPLICA_ID": replica,
            "BRIDGE_STATE_DIR": str(self._tmp / f"state-{replica}"),
        }
        bridge = BridgeProcess(env=env, log_path=self._tmp / f"{replica}.log", clear_env=True)
        bridge.start()
        self.live[replica] = bridge
        try:
            await bridge.wait_ready(READY_TIMEOUT)
        except BaseException:
            bridge.stop()
            raise
        return bridge

    def kill(self, replica: str) -> float:
        """SIGKILL ``replica``; returns when the signal was sent (unix seconds)."""
        bridge = self.live.pop(replica)
        assert bridge.proc is not None
        at = time.time()
        bridge.proc.send_signal(signal.SIGKILL)
        bridge.proc.wait(timeout=10)
        return at

    async def stop_all(self) -> None:
        """SIGTERM every replica (each releases what it owns), SIGKILL what does not exit."""
        for bridge in self.live.values():
            with contextlib.suppress(ProcessLookupError):
                bridge.signal(signal.SIGTERM)
        for bridge in self.live.values():
            try:
                await bridge.wait_exit(STOP_TIMEOUT)
            except AssertionError:
                pass  # reported by the kill below: a stuck replica does not hold the bench
            finally:
                bridge.stop()
        self.live.clear()

    async def owned(self) -> dict[str, set[str]]:
        """Replica → the endpoints it streams, for every live replica."""
        return {name: streaming(await b.status()) for name, b in self.live.items()}

    async def wait_owned(
        self, predicate: Callable[[dict[str, set[str]]], bool], within: float
    ) -> dict[str, set[str]]:
        """Poll every replica's ``/status`` until ``predicate(owned)`` holds (bounded)."""
        deadline = time.monotonic() + within
        owned: dict[str, set[str]] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, KeyError):
                owned = await self.owned()
                if predicate(owned):
                    return owned
            await asyncio.sleep(POLL)
        counts = {name: len(names) for name, names in owned.items()}
        raise TimeoutError(f"endpoint ownership not as expected within {within}s: {counts}")

    async def wait_role(self, replica: str, endpoint: str, role: str, within: float) -> None:
        """Poll ``replica``'s ``/status`` until it reports ``role`` for ``endpoint``."""
        bridge = self.live[replica]
        try:
            await bridge.wait_status(lambda s: s["endpoints"][endpoint]["role"] == role, within)
        except AssertionError as exc:
            raise TimeoutError(f"{replica} is not {role} for {endpoint}: {exc}") from None


async def delete_coordination_queues(url: str, endpoints: list[str]) -> None:
    """Delete the endpoints' lease and positions queues (shared by name across replicas, so
    each bench run uses fresh endpoint names and removes them afterwards)."""
    conn = await aio_pika.connect(url)
    try:
        for name in endpoints:
            for queue in (lease_queue(name), position_queue(name)):
                with contextlib.suppress(Exception):
                    channel = await conn.channel()
                    await channel.queue_delete(queue)
    finally:
        await conn.close()
