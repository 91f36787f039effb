"""Fault tests: the bridge process against a Salesforce-like server (replay from the stored
position) and real RabbitMQ, streaming at a steady rate while something breaks. Each test counts
every ``data.payload.seq`` that reached the queue: zero missing, duplicates counted and reported
(``record_property("duplicates", n)``; consumers drop them by the stable ``message_id``).

1 sessions dropped · 2 server restarted · 3 RabbitMQ connections closed · 4 SIGKILL and restart
· 5 SIGTERM while the buffer is full · 6 RabbitMQ blocked longer than the server's reconnect
budget · 7 a stored position older than retention, per gap policy · 8 malformed and oversize
messages among good ones (scriptable fake server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.positions import PositionStore, StoredPosition
from tests.e2e.conftest import bridge_env
from tests.e2e.harness import AMQP_URL, BridgeProcess, QueueCollector, running_bridge
from tests.fakes.fake_bayeux import FakeBayeux, append_messages, raw_body
from tests.faults.proxy import DOWNSTREAM, FaultProxy
from tests.fixtures.rabbitmq import (
    RabbitNode,
    close_named_connections,
    memory_alarm,
    read_memory_watermark,
)
from tests.integration.noloss.conftest import (
    SalesforceFactory,
    SalesforceServer,
    salesforce_factory,  # noqa: F401 (the fixture)
)


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"
RATE = 500  # events per second from the server
COUNT = 1500  # three seconds of streaming
WAIT = 60.0  # bound on every wait for deliveries (a busy 2-core machine)


# -- helpers ---------------------------------------------------------------------------------


def sf_env(
    tmp_path: Path, server: SalesforceServer, exchange: str, **endpoint: Any
) -> dict[str, str]:
    """A bridge with one replaying endpoint ``src`` on ``server``."""
    config = {
        "url": server.url,
        "channels": [CHANNEL],
        "connection_types": "long-polling",
        "exchange": exchange,
        "replay": "stored",
        "replay_fallback": "all",
        "gap_policy": "earliest",
        **endpoint,
    }
    return bridge_env(
        tmp_path,
        {"src": config},
        BRIDGE_POSITION_FLUSH_INTERVAL="0.2",
        BRIDGE_CONTROL_EXCHANGE=f"{exchange}.control",
    )


def payload_seqs(collector: QueueCollector) -> list[int]:
    return [int(d.body["payload"]["seq"]) for d in collector.deliveries]


async def wait_seqs(collector: QueueCollector, count: int, within: float = WAIT) -> None:
    """Wait (bounded) until seqs 1..count all arrived."""
    await wait_seqs_range(collector, 1, count, within)


async def wait_seqs_range(
    collector: QueueCollector, first: int, last: int, within: float = WAIT
) -> None:
    """Wait (bounded) until seqs first..last all arrived; fail naming the missing ones."""
    wanted = set(range(first, last + 1))
    deadline = time.monotonic() + within
    while missing := sorted(wanted - set(payload_seqs(collector))):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after {within}s, {len(missing)} of seqs {first}..{last} missing: "
                f"{describe_runs(missing)}"
            )
        arrived = len({d.message_id for d in collector.deliveries})
        await collector.wait_for(arrived + 1, 1.0, quiet=True)


def describe_runs(numbers: list[int], limit: int = 8) -> str:
    """``[3, 4, 5, 9]`` as ``"3..5, 9"`` (the first ``limit`` runs)."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    text = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in runs[:limit])
    return text + (f" and {len(runs) - limit} more runs" if len(runs) > limit else "")


def check_complete(
    collector: QueueCollector, count: int, record_property: Callable[[str, object], None]
) -> int:
    """Assert seqs 1..count all arrived; return (and report) how many arrived twice."""
    seqs = payload_seqs(collector)
    missing = sorted(set(range(1, count + 1)) - set(seqs))
    assert not missing, f"{len(missing)} missing, first {missing[:10]}"
    duplicates = len(seqs) - len(set(seqs))
    # A duplicate is the same event: same message_id, so consumers can drop it.
    ids: dict[int, set[str | None]] = {}
    for d in collector.deliveries:
        ids.setdefault(int(d.body["payload"]["seq"]), set()).add(d.message_id)
    assert all(len(v) == 1 for v in ids.values()), "one message_id per event"
    record_property("duplicates", duplicates)
    print(f"delivered {len(seqs)}: {count} events, {duplicates} duplicates")
    return duplicates


def sample(metrics: dict[str, float], name: str, **labels: str) -> float | None:
    """The value of ``name`` whose labels include ``labels`` (label order does not matter)."""
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            return value
    return None


async def wait_sample(
    bridge: BridgeProcess, name: str, value: float, within: float = WAIT, **labels: str
) -> None:
    deadline = time.monotonic() + within
    current = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            current = sample(await bridge.metrics(), name, **labels)
            if current is not None and current >= value:
                return
        await asyncio.sleep(0.1)  # another process: polling is all there is
    raise AssertionError(f"{name}{labels} = {current}, expected >= {value}\n{bridge.log_tail()}")


def connection_name(bridge: BridgeProcess) -> str:
    assert bridge.proc is not None
    return f"cometd-bridge/{socket.gethostname()}/{bridge.proc.pid}"


class PausableProxy:
    """A TCP proxy to RabbitMQ that can stop forwarding (a broker that went very slow) for
    this bridge only, without touching the shared broker."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._open = asyncio.Event()
        self._open.set()
        self._up_open = asyncio.Event()  # the client -> broker direction only
        self._up_open.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()
        self._up_open.set()

    def hold_publishes(self) -> None:
        """Hold what the client sends (publishes stay unconfirmed and never reach the broker)
        while the broker's frames (confirms, a Connection.Close) still reach the client."""
        self._up_open.clear()

    async def close(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers += [writer, up_writer]
        for src, dst, gate in ((reader, up_writer, self._up_open), (up_reader, writer, None)):
            task = asyncio.create_task(self._pipe(src, dst, gate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                await self._open.wait()
                if gate is not None:
                    await gate.wait()
                dst.write(data)
                await dst.drain()
        dst.close()


def amqp_host_port() -> tuple[str, int]:
    """The test broker's host and port, for a proxy in front of it."""
    host, _, port = AMQP_URL.split("@", 1)[-1].split("/", 1)[0].partition(":")
    return host, int(port or 5672)


@contextlib.asynccontextmanager
async def pausable_proxy() -> AsyncIterator[PausableProxy]:
    proxy = PausableProxy(*amqp_host_port())
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


# -- 1 to 6: zero missing --------------------------------------------------------------------


async def test_1_sessions_dropped_mid_stream(
    sf_server: SalesforceServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    env = sf_env(tmp_path, sf_server, exchange_name)
    async with running_bridge(env, tmp_path) as bridge:
        started = time.monotonic()
        await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
        await collector.wait_for(COUNT // 3, within=WAIT)
        assert await sf_server.drop_sessions() == 1
        await wait_seqs(collector, COUNT)
        last_id = max(int(d.headers["replay-id"]) for d in collector.deliveries)
        status = await bridge.wait_status(
            lambda s: s["endpoints"]["src"]["positions"][CHANNEL]["replay_id"] == last_id,
            within=WAIT,
        )
        metrics = await bridge.metrics()
        elapsed = time.monotonic() - started
    # The fault hit the stream: the dropped session was replaced by a new one mid-stream.
    assert (sample(metrics, "cometd_bridge_handshakes_total", result="success") or 0) >= 2
    assert check_complete(collector, COUNT, record_property) == 0, "0 duplicates"
    # The stored position is the last event's, and its age is seconds since it was stored
    # (not since the epoch, not milliseconds), in /status and in /metrics alike.
    position = status["endpoints"]["src"]["positions"][CHANNEL]
    assert 0 <= position["age_seconds"] <= elapsed, position
    age = sample(metrics, "cometd_bridge_replay_position_age_seconds", channel=CHANNEL)
    assert age is not None, "replay_position_age_seconds reported for the channel"
    assert 0 <= age <= elapsed, age


async def drop_session_while_confirms_lag(
    sf_server: SalesforceServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    *,
    lag: float,
    in_flight: int,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Stream through a proxy in front of the broker, delay everything the broker sends (its
    confirms) by ``lag`` seconds, drop the session once ``in_flight`` messages await their
    confirm, and wait for every event. Returns the final metrics and the bridge's log."""
    async with FaultProxy(*amqp_host_port(), framing="raw") as proxy:
        env = sf_env(tmp_path, sf_server, exchange_name)
        env["BRIDGE_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with running_bridge(env, tmp_path) as bridge:
            await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
            await collector.wait_for(COUNT // 5, within=WAIT)
            proxy.set_delay(lag, DOWNSTREAM)
            await wait_sample(bridge, "cometd_bridge_inflight_messages", in_flight, endpoint="src")
            assert await sf_server.drop_sessions() == 1
            await wait_seqs(collector, COUNT)
            return await bridge.metrics(), bridge.log_events()


async def test_1_session_dropped_while_confirms_lag_replays_nothing_twice(
    sf_server: SalesforceServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """The resubscription after a dropped session resumes from the confirmed position. With
    the broker's confirms 0.15 s behind (about 75 events at this rate), resuming at once would
    have the server replay every event still in flight; the bridge lets them be confirmed
    first (nothing new arrives before the subscribe), so none arrives twice."""
    metrics, _ = await drop_session_while_confirms_lag(
        sf_server, collector, exchange_name, tmp_path, lag=0.15, in_flight=20
    )
    assert (sample(metrics, "cometd_bridge_handshakes_total", result="success") or 0) >= 2
    assert check_complete(collector, COUNT, record_property) == 0, "0 duplicates"


async def test_1_session_dropped_while_confirms_lag_past_the_wait_loses_nothing(
    sf_server: SalesforceServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """The wait before a resubscription is bounded (0.5 s): with confirms 0.8 s behind, the
    bridge resubscribes from the confirmed position while events are still unconfirmed. The
    server replays them: duplicates, said in the log, and nothing missing."""
    _, events = await drop_session_while_confirms_lag(
        sf_server, collector, exchange_name, tmp_path, lag=0.8, in_flight=200
    )
    said = [e for e in events if str(e.get("event", "")).startswith("resubscribing before")]
    assert said, "the resubscription that did not wait for every confirm is logged"
    assert said[0]["outstanding"] > 0, said[0]
    duplicates = check_complete(collector, COUNT, record_property)
    assert duplicates > 0, "the fault hit: the server replayed what was unconfirmed"


async def test_2_server_restarted_mid_stream(
    sf_server: SalesforceServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    env = sf_env(tmp_path, sf_server, exchange_name)
    async with running_bridge(env, tmp_path) as bridge:
        await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
        await collector.wait_for(COUNT // 3, within=WAIT)
        # The publishing in progress dies with the server; what it published is retained.
        await sf_server.restart()
        result = await sf_server.publish(CHANNEL, COUNT // 3, rate=RATE)
        total = int(result["last_seq"])
        await wait_seqs(collector, total)
        metrics = await bridge.metrics()
    # The fault hit the stream: a new session after the restart, then 0 missing, 0 duplicates.
    assert (sample(metrics, "cometd_bridge_handshakes_total", result="success") or 0) >= 2
    assert check_complete(collector, total, record_property) == 0, "0 duplicates"


async def test_3_rabbitmq_connections_closed_mid_stream(
    sf_server: SalesforceServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    async with pausable_proxy() as proxy:
        env = sf_env(tmp_path, sf_server, exchange_name, max_inflight=20)
        env["BRIDGE_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with running_bridge(env, tmp_path) as bridge:
            await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
            await collector.wait_for(COUNT // 3, within=WAIT)
            # The close must hit publishes in flight, whenever rabbitmqctl gets to it (seconds
            # on a loaded machine): what the bridge sends is held from now on, so its window
            # fills with messages the broker never saw, while the broker's Close reaches it.
            proxy.hold_publishes()
            await wait_sample(bridge, "cometd_bridge_inflight_messages", 1, endpoint="src")
            name = connection_name(bridge)
            assert await close_named_connections(name, "noloss fault test") == 1
            await wait_sample(
                bridge,
                "cometd_bridge_publish_failures_total",
                1,
                endpoint="src",
                reason="connection",
            )
            proxy.resume()
            # The broker lists a reconnected connection a little later than it carries messages.
            async with asyncio.timeout(WAIT):
                while not await close_named_connections(name, "noloss test, again"):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)  # polling the broker's connection list
            await wait_seqs(collector, COUNT)
            metrics = await bridge.metrics()
    redelivered = sample(metrics, "cometd_bridge_duplicates_redelivered_total", endpoint="src")
    assert (redelivered or 0) >= 1, "the close hit unconfirmed messages, published again"
    assert check_complete(collector, COUNT, record_property) == 0, "0 duplicates"


async def test_4_sigkill_and_restart_resume_from_the_stored_position(
    sf_server: SalesforceServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    async with pausable_proxy() as proxy:
        env = sf_env(tmp_path, sf_server, exchange_name, max_pending_count=50, max_inflight=20)
        env["BRIDGE_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with running_bridge(env, tmp_path) as bridge:
            await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
            await collector.wait_for(COUNT // 3, within=WAIT)
            # Killed while it holds many received, unconfirmed messages (broker stalled, buffer
            # full): the stored position must not have passed any of them.
            proxy.pause()
            await wait_sample(bridge, "cometd_bridge_fetch_paused", 1, endpoint="src")
            status = await bridge.status()
            bridge.signal(signal.SIGKILL)
            await bridge.wait_exit()
    assert status["endpoints"]["src"]["outstanding"] > 0
    stored = PositionStore(tmp_path / "state").load("src")[CHANNEL].replay_id
    # What the broker confirmed may still be on its way to the test's consumer: wait (bounded)
    # for everything up to the stored position; a position that passed the broker never gets it.
    deadline = time.monotonic() + 15.0
    while True:
        confirmed = {int(d.headers["replay-id"]) for d in collector.deliveries}
        below = set(range(min(confirmed), stored + 1)) - confirmed
        if not below or time.monotonic() > deadline:
            break
        await collector.wait_for(len(collector.deliveries) + 1, 1.0, quiet=True)
    assert not below, f"position {stored} passed the broker: {sorted(below)[:10]} never arrived"

    async with running_bridge(sf_env(tmp_path, sf_server, exchange_name), tmp_path):
        await wait_seqs(collector, COUNT)
    check_complete(collector, COUNT, record_property)
    stats = await sf_server.stats()
    resumed = [s for s in stats["subscribes"] if s["valid"]][-1]
    assert resumed["replay"] == stored, "resumed from the stored position"


async def test_5_sigterm_while_the_buffer_is_full(
    sf_server: SalesforceServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    async with pausable_proxy() as proxy:
        env = sf_env(tmp_path, sf_server, exchange_name, max_pending_count=50, max_inflight=20)
        env["BRIDGE_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        env["BRIDGE_SHUTDOWN_TIMEOUT"] = "15"
        async with running_bridge(env, tmp_path) as bridge:
            await sf_server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
            await collector.wait_for(COUNT // 5, within=WAIT)
            proxy.pause()  # the broker stops answering: the window, then the buffer, fill up
            await wait_sample(bridge, "cometd_bridge_fetch_paused", 1, endpoint="src")
            bridge.signal(signal.SIGTERM)
            await bridge.wait_status(lambda s: not s["ready"], within=WAIT)
            proxy.resume()  # the shutdown publishes what it had received, within its deadline
            assert await bridge.wait_exit() == 0
            totals = bridge.final_totals()["src"]
        assert totals["confirmed"] == totals["received"]
    assert totals["received"] < COUNT, "stopped mid-stream"
    # Started again, it resumes from what the broker confirmed.
    async with running_bridge(sf_env(tmp_path, sf_server, exchange_name), tmp_path):
        await wait_seqs(collector, COUNT)
    check_complete(collector, COUNT, record_property)


async def test_6_rabbitmq_blocked_longer_than_the_reconnect_budget(
    sf_server: SalesforceServer,
    dedicated_rabbitmq: RabbitNode,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """The memory alarm blocks a whole broker: it is raised on a node of the test's own
    (``dedicated_rabbitmq``), never on the shared one."""
    budget = 2.0  # the server's max_interval (SALESFORCE_DEFAULTS): a session held without
    # a /meta/connect for longer is gone
    # Each rabbitmqctl call takes seconds on a loaded machine: the stream goes on only once
    # the alarm is raised, so the fault always hits it (not after its last message).
    count = COUNT
    restore = await asyncio.to_thread(read_memory_watermark, dedicated_rabbitmq)
    collector = QueueCollector()
    await collector.start(exchange_name, url=dedicated_rabbitmq.url)
    try:
        env = sf_env(tmp_path, sf_server, exchange_name, max_pending_count=100)
        env["BRIDGE_AMQP_URL"] = dedicated_rabbitmq.url
        async with running_bridge(env, tmp_path) as bridge:
            await sf_server.publish(CHANNEL, count // 5, rate=RATE)
            await wait_seqs(collector, count // 5)
            async with memory_alarm(dedicated_rabbitmq, restore):
                await sf_server.publish(CHANNEL, count - count // 5, rate=RATE, wait=False)
                # The buffer fills, the replay session is ended on purpose...
                await wait_sample(
                    bridge,
                    "cometd_bridge_reconnects_total",
                    1,
                    endpoint="src",
                    reason="buffer_full",
                )
                # ...and the broker stays blocked past the server's reconnect budget (the
                # fault's duration, not a synchronisation).
                await asyncio.sleep(budget * 1.5)
                status = await bridge.status()
                assert status["endpoints"]["src"]["state"] == "waiting_for_broker"
                blocked_at = len(collector.deliveries)
            await wait_seqs(collector, count)
            metrics = await bridge.metrics()
    finally:
        await collector.close()
    assert blocked_at < count, "the alarm was raised mid-stream"
    check_complete(collector, count, record_property)
    assert (sample(metrics, "cometd_bridge_possible_gaps_total") or 0) == 0


# -- 7: gaps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["fail", "latest", "earliest"])
async def test_7_stored_position_older_than_retention(
    sf_server: SalesforceServer,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    policy: str,
) -> None:
    await sf_server.publish(CHANNEL, 20)
    retention = (await sf_server.set_retention(5))[CHANNEL]  # seqs 16..20 retained
    stale = retention["oldest"] - 5
    store = PositionStore(tmp_path / "state")
    store.save("src", {CHANNEL: StoredPosition(stale, time.time() - 3600)})
    control = QueueCollector()
    await control.start(f"{exchange_name}.control")
    try:
        env = sf_env(tmp_path, sf_server, exchange_name, gap_policy=policy)
        async with running_bridge(env, tmp_path, wait_ready=policy != "fail") as bridge:
            await control.wait_for(1, within=WAIT)
            if policy == "fail":
                status = await bridge.wait_status(
                    lambda s: s["endpoints"]["src"]["state"] == "failed", within=WAIT
                )
                assert "gap_policy=fail" in status["endpoints"]["src"]["last_error"]
                ready, body = await bridge.get("/readyz")
                assert ready == 503
                assert "src" in body
            else:
                await sf_server.publish(CHANNEL, 5)  # seqs 21..25
                expected = list(range(21, 26)) if policy == "latest" else list(range(16, 26))
                await collector.wait_for(len(expected), within=WAIT)
            metrics = await bridge.metrics()
            status = await bridge.status()
    finally:
        await control.close()

    assert sample(metrics, "cometd_bridge_replay_gaps_total", channel=CHANNEL) == 1
    [record] = [d.body for d in control.deliveries]
    assert record["type"] == "replay_gap"
    assert record["endpoint"] == "src"
    assert record["channel"] == CHANNEL
    assert record["replay_id"] == stale
    assert record["policy"] == policy
    assert record["resumed_from"] == {"fail": None, "latest": -1, "earliest": -2}[policy]
    assert status["endpoints"]["src"]["last_gap"]["replay_id"] == stale
    logged = [e for e in bridge.log_events() if "older than the server's retention" in e["event"]]
    assert logged
    assert logged[0]["channel"] == CHANNEL
    assert logged[0]["replay_id"] == stale
    if policy == "fail":
        assert collector.deliveries == []
        # The position is kept for the operator to decide.
        assert store.load("src")[CHANNEL].replay_id == stale
    else:
        assert sorted(payload_seqs(collector)) == expected


async def test_7_gap_found_when_resubscribing_after_a_lost_session(
    sf_server: SalesforceServer, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    """The running bridge's position falls out of retention while its session is lost: the
    automatic resubscription fails with the 400, and the gap policy (earliest) applies."""
    host = sf_server.url.split("//", 1)[1].split("/", 1)[0]
    control = QueueCollector()
    await control.start(f"{exchange_name}.control")
    proxy = PausableProxy("127.0.0.1", int(host.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        env = sf_env(tmp_path, sf_server, exchange_name)
        env_endpoints = json.loads(env["BRIDGE_ENDPOINTS"])
        env_endpoints["src"]["url"] = sf_server.url.replace(host, f"127.0.0.1:{proxy.port}")
        env["BRIDGE_ENDPOINTS"] = json.dumps(env_endpoints)
        async with running_bridge(env, tmp_path) as bridge:
            first = await sf_server.publish(CHANNEL, 10)
            await collector.wait_for(10, within=WAIT)
            position = 1000 + int(first["last_seq"]) - 1  # the server's ids start at 1000
            await bridge.wait_status(
                lambda s: s["endpoints"]["src"]["positions"][CHANNEL]["replay_id"] == position,
                within=WAIT,
            )
            proxy.pause()  # the bridge hears nothing while...
            assert await sf_server.drop_sessions() == 1  # ...its session is lost,
            await sf_server.publish(CHANNEL, 20)  # seqs 11..30, and only 26..30 are retained
            await sf_server.set_retention(5)
            proxy.resume()
            await control.wait_for(1, within=WAIT)
            await collector.wait_for(15, within=WAIT)
            metrics = await bridge.metrics()
    finally:
        await proxy.close()
        await control.close()
    assert sorted(payload_seqs(collector)) == [*range(1, 11), *range(26, 31)]
    [record] = [d.body for d in control.deliveries]
    assert record["replay_id"] == position
    assert record["policy"] == "earliest"
    assert sample(metrics, "cometd_bridge_replay_gaps_total", channel=CHANNEL) == 1


# -- 8: malformed and oversize ---------------------------------------------------------------


async def test_8_malformed_and_oversize_messages_among_good_ones(
    fake_bayeux: FakeBayeux, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    channel = "/orders/created"
    good = 300
    # Scripted on /meta/connect (counted from the server's start): a body that is not JSON,
    # items that are not Bayeux messages, and, below, one event over max_message_size (4 MiB).
    fake_bayeux.on("/meta/connect", raw_body(b'[{"channel": "/meta/connect", '), nth=4)
    fake_bayeux.on(
        "/meta/connect", append_messages({"no": "channel"}, {"channel": 7, "data": {}}), nth=6
    )
    endpoint = {
        "url": fake_bayeux.url,
        "channels": [channel],
        "connection_types": "long-polling",
        "exchange": exchange_name,
    }
    async with running_bridge(bridge_env(tmp_path, {"src": endpoint}), tmp_path) as bridge:
        for seq in range(1, good + 1):
            fake_bayeux.publish(channel, {"seq": seq})
            if seq == good // 2:
                fake_bayeux.publish(channel, {"seq": -1, "pad": "x" * (4 * 1024 * 1024 + 100)})
            if seq % 10 == 0:
                await asyncio.sleep(0.02)  # a steady rate: many connects, so the rules fire
        await collector.wait_for(good, within=WAIT)
        metrics = await bridge.metrics()
    seqs = [int(d.body["seq"]) for d in collector.deliveries]
    assert sorted(set(seqs)) == list(range(1, good + 1)), "every good message, nothing else"
    malformed = "cometd_bridge_malformed_messages_total"
    assert sample(metrics, malformed, reason="oversize") == 1
    assert (sample(metrics, malformed, reason="invalid_json") or 0) >= 1
    assert (sample(metrics, malformed, reason="not_bayeux") or 0) >= 1
    assert sample(metrics, "cometd_bridge_reconnects_total", reason="malformed") == 1
    assert "oversize" in json.dumps(bridge.log_events())


# -- back-pressure on servers without replay -------------------------------------------------


async def test_ack_server_streams_with_acks_held_until_confirmed(
    request: pytest.FixtureRequest,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    factory: SalesforceFactory = request.getfixturevalue("salesforce_factory")
    server = factory(ack=1, replay=0)
    env = sf_env(tmp_path, server, exchange_name, replay="off", ack="on")
    async with running_bridge(env, tmp_path) as bridge:
        await server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
        await collector.wait_for(COUNT // 3, within=WAIT)
        assert await close_named_connections(connection_name(bridge), "noloss ack test") == 1
        await wait_seqs(collector, COUNT)
        status = await bridge.status()
    assert status["endpoints"]["src"]["delivery"] == "ack"
    check_complete(collector, COUNT, record_property)


async def test_server_without_replay_or_ack_counts_the_expired_session(
    request: pytest.FixtureRequest,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    factory: SalesforceFactory = request.getfixturevalue("salesforce_factory")
    server = factory(replay=0)
    async with pausable_proxy() as proxy:
        env = sf_env(tmp_path, server, exchange_name, replay="off", ack="off", max_pending_count=50)
        env["BRIDGE_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        async with running_bridge(env, tmp_path) as bridge:
            await server.publish(CHANNEL, COUNT, rate=RATE, wait=False)
            await collector.wait_for(COUNT // 5, within=WAIT)
            proxy.pause()
            await wait_sample(bridge, "cometd_bridge_fetch_paused", 1, endpoint="src")
            # Fetching stopped; the server expires the session it no longer hears from.
            async with asyncio.timeout(WAIT):
                while (await server.stats())["sessions"]:  # noqa: ASYNC110 (other process)
                    await asyncio.sleep(0.1)
            proxy.resume()
            await wait_sample(
                bridge,
                "cometd_bridge_possible_gaps_total",
                1,
                endpoint="src",
                reason="session_expired",
            )
            await server.publish(CHANNEL, COUNT, rate=RATE)  # let the first run finish
            # Streaming goes on after the new handshake.
            await server.publish(CHANNEL, 50)
            await wait_seqs_range(collector, 2 * COUNT + 1, 2 * COUNT + 50)
            status = await bridge.status()
            metrics = await bridge.metrics()
    assert status["endpoints"]["src"]["delivery"] == "none"
    seqs = payload_seqs(collector)
    assert set(seqs) >= set(range(2 * COUNT + 1, 2 * COUNT + 51))
    published = 2 * COUNT + 50
    lost = published - len(set(seqs))
    record_property("lost", lost)
    # At-least-once from receipt: everything the bridge received reached the queue, once...
    received = sample(metrics, "cometd_bridge_messages_received_total", endpoint="src")
    assert received == len(seqs) == len(set(seqs)), (received, len(seqs), len(set(seqs)))
    # ...so the loss is only what the server forgot with the expired session: part of the
    # first run (published while fetching was stopped), nothing received before the stall.
    assert 0 < lost <= COUNT - COUNT // 5, f"{lost} of {published} lost"
    assert set(seqs) >= set(range(1, COUNT // 5 + 1)), "nothing received before the stall lost"
    assert any("may be lost" in e["event"] for e in bridge.log_events())


async def test_corrupt_positions_file_stops_the_endpoint_never_starts_from_scratch(
    sf_server: SalesforceServer, collector: QueueCollector, exchange_name: str, tmp_path: Path
) -> None:
    await sf_server.publish(CHANNEL, 10)
    state = tmp_path / "state"
    state.mkdir()
    (state / "src.positions.json").write_text('{"/event/Order__e": {"replay_id": "oops"')
    env = sf_env(tmp_path, sf_server, exchange_name)
    async with running_bridge(env, tmp_path, wait_ready=False) as bridge:
        status = await bridge.wait_status(
            lambda s: s["endpoints"]["src"]["state"] == "failed", within=WAIT
        )
        ready, _ = await bridge.get("/readyz")
    endpoint = status["endpoints"]["src"]
    assert "corrupt" in endpoint["last_error"]
    assert endpoint["restarts"] == 0
    assert ready == 503
    assert collector.deliveries == [], "no replay from the fallback start"
    assert (await sf_server.stats())["subscribes"] == []
    assert list(state.glob("src.positions.json.corrupt-*")), "kept for the operator"
    # Started again (a pod restart): still refuses, until an operator sets a position.
    async with running_bridge(env, tmp_path, wait_ready=False) as bridge:
        status = await bridge.wait_status(
            lambda s: s["endpoints"]["src"]["state"] == "failed", within=WAIT
        )
    assert "set aside as corrupt" in status["endpoints"]["src"]["last_error"]
    assert collector.deliveries == []
    assert (await sf_server.stats())["subscribes"] == []
