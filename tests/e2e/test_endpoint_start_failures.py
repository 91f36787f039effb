"""Whatever goes wrong at start is said, never a silent hang or a traceback: unreadable
positions mark the endpoint failed (logs, /status, /readyz), the documented recovery
(`positions set|clear`) brings it back, broker-side refusals are retried, configuration
errors and a second bridge on the same state directory exit 2.

Real RabbitMQ, the supervisor in-process (its /status and /readyz checks read directly, the
HTTP layer serves exactly these), the fake Bayeux server as the CometD side, and
``python -m bridge run`` subprocesses where the exit code is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bridge.cli import main
from bridge.positions import PositionStore, StoredPosition
from bridge.supervisor import Supervisor
from tests.e2e.inprocess import endpoint_up, eventually, running_supervisor, supervisor_env
from tests.fakes.fake_bayeux import FakeBayeux
from tests.fixtures.rabbitmq import unique_name


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"


def replay_endpoint(fake: FakeBayeux, exchange: str) -> dict[str, Any]:
    return {
        "url": fake.url,
        "channels": [CHANNEL],
        "connection_types": "long-polling",
        "exchange": exchange,
        "replay": "stored",
        "replay_fallback": "new",
    }


async def assert_failed_with(sup: Supervisor, *fragments: str) -> None:
    await eventually(lambda: "ep" in sup.workers and sup.workers["ep"].failed, 15, "ep failed")
    status = sup.status()["endpoints"]["ep"]
    assert status["state"] == "failed"
    for fragment in fragments:
        assert fragment in status["last_error"]
    ready, reason = sup.ready()
    assert not ready
    assert reason == "endpoints failed, see /status: ep"


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """Root ignores permissions; an immutable directory is what a read-only one is to others."""
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


async def test_a_positions_file_nested_past_the_recursion_limit_fails_the_endpoint_visibly(
    amqp_url: str, fake_bayeux: FakeBayeux, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "ep.positions.json").write_text("[" * 50_000 + "]" * 50_000)
    endpoints = {"ep": replay_endpoint(fake_bayeux, unique_name("ex"))}
    async with running_supervisor(amqp_url, tmp_path, endpoints) as sup:
        await assert_failed_with(sup, "corrupt", "nested too deeply")


async def test_a_corrupt_file_that_cannot_be_moved_aside_fails_the_endpoint_visibly(
    amqp_url: str, fake_bayeux: FakeBayeux, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / ".lock").touch()  # the lock file may be locked, not created, in a frozen dir
    (state / "ep.positions.json").write_text("{broken")
    endpoints = {"ep": replay_endpoint(fake_bayeux, unique_name("ex"))}
    with immutable(state):
        async with running_supervisor(amqp_url, tmp_path, endpoints) as sup:
            await assert_failed_with(sup, "could not be moved aside")


async def test_corrupt_file_then_positions_clear_or_set_and_the_endpoint_resumes(
    amqp_url: str, fake_bayeux: FakeBayeux, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = PositionStore(state)
    store.path("ep").write_text("{broken")
    endpoints = {"ep": replay_endpoint(fake_bayeux, unique_name("ex"))}
    cli = ["positions", "--state-dir", str(state)]

    async with running_supervisor(amqp_url, tmp_path, endpoints) as sup:
        await assert_failed_with(sup, "corrupt")
        # While the bridge runs, the CLI refuses to change anything.
        assert main([*cli, "set", "ep", CHANNEL, "5"]) == 1
        assert "in use by process" in capsys.readouterr().err
    # Still refused: nobody decided yet.
    async with running_supervisor(amqp_url, tmp_path, endpoints) as sup:
        await assert_failed_with(sup, "set aside as corrupt")

    # The sequence: set, then clear. Both work; the corrupt copy no longer blocks.
    assert main([*cli, "set", "ep", CHANNEL, "5"]) == 0
    assert main([*cli, "clear", "ep", CHANNEL]) == 0
    async with running_supervisor(amqp_url, tmp_path, endpoints) as sup:
        await endpoint_up(sup)
        assert sup.ready() == (True, "ok")
    assert len(store.corrupt_copies("ep")) == 1, "kept for inspection"

    store.path("ep").write_text("{broken again")
    assert main([*cli, "set", "ep", CHANNEL, "7"]) == 0
    async with running_supervisor(amqp_url, tmp_path, endpoints) as sup:
        await endpoint_up(sup)
    assert store.load("ep")[CHANNEL] == StoredPosition(7, store.load("ep")[CHANNEL].updated_at)


async def test_an_exchange_declared_differently_is_retried_until_the_broker_accepts(
    amqp_url: str, fake_bayeux: FakeBayeux, tmp_path: Path
) -> None:
    exchange = unique_name("ex")
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        endpoint = {
            "url": fake_bayeux.url,
            "channels": [CHANNEL],
            "connection_types": "long-polling",
            "exchange": exchange,
            "exchange_type": "topic",
        }
        async with running_supervisor(amqp_url, tmp_path, {"ep": endpoint}) as sup:
            await eventually(
                lambda: "PRECONDITION_FAILED" in sup.ready()[1], 15, "the refusal in /readyz"
            )
            assert "AMQP topology not declared" in (sup.status()["startup_error"] or "")
            await channel.exchange_delete(exchange)  # the operator fixes the broker side
            await endpoint_up(sup, within=30)
            assert sup.status()["startup_error"] is None
    finally:
        with contextlib.suppress(Exception):
            channel = await connection.channel()
            await channel.exchange_delete(exchange)
        await connection.close()


def run_bridge(env: dict[str, str], within: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bridge", "run"],
        env=full,
        capture_output=True,
        text=True,
        timeout=within,
    )


async def test_a_second_bridge_on_the_same_state_directory_exits_2(
    amqp_url: str, fake_bayeux: FakeBayeux, tmp_path: Path
) -> None:
    endpoints = {"ep": replay_endpoint(fake_bayeux, unique_name("ex"))}
    async with running_supervisor(amqp_url, tmp_path, endpoints) as sup:
        await endpoint_up(sup)
        second = await asyncio.to_thread(run_bridge, supervisor_env(amqp_url, tmp_path, endpoints))
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"in use by process {os.getpid()}" in second.stderr
    assert "Traceback" not in second.stderr


def test_a_private_key_that_does_not_parse_exits_2(amqp_url: str, tmp_path: Path) -> None:
    endpoint = {
        "url": "http://127.0.0.1:9/cometd/61.0",
        "channels": [CHANNEL],
        "exchange": unique_name("ex"),
        "auth": {
            "kind": "salesforce_jwt",
            "login_url": "http://127.0.0.1:9",
            "client_id": "c",
            "username": "u@example.com",
            "private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        },
    }
    result = run_bridge(supervisor_env(amqp_url, tmp_path, {"ep": endpoint}))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "private_key" in result.stderr
    assert "Traceback" not in result.stderr
