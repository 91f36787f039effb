"""The supervisor in-process: configured through the same variables an operator sets, run in
the test's loop (real RabbitMQ, real HTTP to the Bayeux servers), so a test reads its
workers, ``status()``, ``ready()`` and metrics registry directly instead of over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bridge.pipeline.worker import EndpointWorker
from bridge.settings import load_settings
from bridge.supervisor import Supervisor


__all__ = ["endpoint_up", "eventually", "metric", "running_supervisor", "supervisor_env"]


def supervisor_env(
    amqp_url: str, tmp_path: Path, endpoints: dict[str, Any], **extra: str
) -> dict[str, str]:
    """The variables of a bridge on ``amqp_url`` with its state in ``tmp_path/state``, plus
    ``extra`` ones (also what ``python -m bridge run`` is given where a test needs the
    process)."""
    return {
        "BRIDGE_AMQP_URL": amqp_url,
        "BRIDGE_ENDPOINTS": json.dumps(endpoints),
        "BRIDGE_HTTP_HOST": "127.0.0.1",
        "BRIDGE_HTTP_PORT": "0",
        "BRIDGE_STATE_DIR": str(tmp_path / "state"),
        "BRIDGE_SHUTDOWN_TIMEOUT": "5",
        **extra,
    }


@contextlib.asynccontextmanager
async def running_supervisor(
    amqp_url: str, tmp_path: Path, endpoints: dict[str, Any], **extra: str
) -> AsyncIterator[Supervisor]:
    """Run the supervisor until the block ends, then stop it (bounded) and check that it
    left nothing it received unconfirmed."""
    env = supervisor_env(amqp_url, tmp_path, endpoints, **extra)
    supervisor = Supervisor(load_settings(env))
    task = asyncio.create_task(supervisor.run())
    try:
        yield supervisor
    finally:
        supervisor.stop()
        async with asyncio.timeout(30):
            unconfirmed = await task
    # run() returns how many received messages were left unconfirmed at exit: none here.
    assert unconfirmed == 0, f"{unconfirmed} messages left unconfirmed at shutdown"


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    """Wait (bounded) for in-process state that has no event of its own; a timeout names
    ``what`` was awaited."""
    try:
        async with asyncio.timeout(within):
            while not check():  # noqa: ASYNC110 - metrics and worker state have no notification
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what}") from None


async def endpoint_up(sup: Supervisor, name: str = "ep", within: float = 20) -> EndpointWorker:
    """Wait until endpoint ``name`` has a worker and it streams; returns the worker."""
    await eventually(lambda: name in sup.workers and sup.workers[name].up, within, f"{name} up")
    return sup.workers[name]


def metric(sup: Supervisor, name: str, **labels: str) -> float:
    """A sample of the supervisor's registry; 0 for a labelled series never touched."""
    return sup.metrics.registry.get_sample_value(name, labels) or 0
