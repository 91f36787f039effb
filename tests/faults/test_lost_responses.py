"""Responses lost on the wire: the bridge process, real CometD servers, real RabbitMQ, and the
fault proxy between the bridge and the server cutting responses that carry events.

A cut response is one the server wrote in full (so it believes the events were delivered) but
the bridge received only in part, then a reset. What that costs depends on the server:

- replay server (``replay: stored``): nothing. The bridge resumes from its confirmed position,
  so every cut event arrives; counted over every sequence number in the queue.
- ack server: nothing. The ack for the cut batch was never sent, so the server re-sends it.
- neither: the cut events are lost, and each cut is counted in
  ``possible_gaps_total{reason="response_lost"}``; nothing else is lost (over WebSocket the
  server may push more into the broken connection before it notices: bounded to a second).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import bridge_env
from tests.e2e.harness import BridgeProcess, QueueCollector, running_bridge
from tests.faults.conftest import ProxyFactory
from tests.faults.proxy import CutReport, FaultProxy
from tests.fixtures.servers import NodeBayeuxServer, NodeServerFactory
from tests.integration.noloss.conftest import SalesforceFactory


pytestmark = pytest.mark.integration

CHANNEL = "/event/Order__e"
RATE = 300  # events per second from the server
CHUNK = RATE // 2  # the server streams in half-second chunks until the cuts are done
CUTS = 5
WAIT = 60.0  # bound on every wait for deliveries (a busy 2-core machine)


def seq_of(body: Any) -> int:
    """The event's sequence number (Salesforce-like events nest it under ``payload``)."""
    return int(body["payload"]["seq"] if "payload" in body else body["seq"])


def seqs(collector: QueueCollector) -> list[int]:
    return [seq_of(d.body) for d in collector.deliveries]


async def wait_for_seqs(collector: QueueCollector, wanted: set[int], within: float = WAIT) -> None:
    """Wait until every seq in ``wanted`` reached the queue; fail naming the missing ones."""
    deadline = time.monotonic() + within
    while missing := wanted - set(seqs(collector)):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} events never reached RabbitMQ within "
                f"{within}s: first {sorted(missing)[:10]}"
            )
        await collector.wait_for(
            len({d.message_id for d in collector.deliveries}) + 1, 1.0, quiet=True
        )


def endpoint_env(
    tmp_path: Path, proxy: FaultProxy, server: NodeBayeuxServer, exchange: str, **endpoint: Any
) -> dict[str, str]:
    config = {
        "url": proxy.url_for(server.url),
        "channels": [CHANNEL],
        "connection_types": server.connection_type or "long-polling",
        "exchange": exchange,
        **endpoint,
    }
    return bridge_env(tmp_path, {"src": config}, BRIDGE_POSITION_FLUSH_INTERVAL="0.2")


def metric(metrics: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``cometd_bridge_<name>`` over the samples whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != f"cometd_bridge_{name}":
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


async def cut_while_streaming(
    proxy: FaultProxy, collector: QueueCollector, cuts: int
) -> list[CutReport]:
    """Cut ``cuts`` responses carrying events; after each, wait until a later event arrived
    (a silent stall fails here, naming the cut it followed)."""
    reports = []
    for n in range(cuts):
        report = await proxy.cut_next_response()
        assert report.seqs, f"cut {n + 1} landed on a response without events: {report}"
        reports.append(report)
        deadline = time.monotonic() + WAIT
        while not any(s > max(report.seqs) for s in seqs(collector)):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"stalled: nothing after seq {max(report.seqs)} arrived within {WAIT}s of "
                    f"cut {n + 1}"
                )
            await collector.wait_for(
                len({d.message_id for d in collector.deliveries}) + 1, 1.0, quiet=True
            )
    assert proxy.counters["cuts"] == cuts
    return reports


class Streaming:
    """The server publishing at ``RATE`` until :meth:`stop`, however long the cuts take on a
    loaded machine; ``last_seq`` is the last one published."""

    def __init__(self, server: NodeBayeuxServer) -> None:
        self.server = server
        self.last_seq = 0
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            result = await self.server.publish(CHANNEL, CHUNK, rate=RATE)
            self.last_seq = int(result["last_seq"])

    async def stop(self) -> int:
        self._stopping.set()
        await self._task
        return self.last_seq


def report_duplicates(
    collector: QueueCollector, record_property: Callable[[str, object], None]
) -> int:
    found = seqs(collector)
    duplicates = len(found) - len(set(found))
    record_property("duplicates", duplicates)
    return duplicates


async def test_cut_responses_on_a_replay_server_lose_nothing(
    salesforce_factory: SalesforceFactory,
    fault_proxy_factory: ProxyFactory,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    server = salesforce_factory()
    proxy = await fault_proxy_factory(server.url)
    env = endpoint_env(
        tmp_path, proxy, server, exchange_name, replay="stored", replay_fallback="all"
    )
    async with running_bridge(env, tmp_path) as bridge:
        streaming = Streaming(server)
        await collector.wait_for(100, within=WAIT)
        reports = await cut_while_streaming(proxy, collector, CUTS)
        count = await streaming.stop()
        await wait_for_seqs(collector, set(range(1, count + 1)))
        stats = await server.stats()
        ready, _ = await bridge.get("/readyz")
    cut_seqs = sorted({s for r in reports for s in (*r.seqs, *r.trailing_seqs)})
    duplicates = report_duplicates(collector, record_property)
    print(f"{CUTS} cuts carried {len(cut_seqs)} events, all delivered; {duplicates} duplicates")
    assert ready == 200
    # Recovery went through the server: a new subscription from the stored position.
    resubscribed = [s for s in stats["subscribes"] if s["valid"]]
    assert len(resubscribed) >= 2, f"no resubscription after the cuts: {stats['subscribes']}"


async def test_cut_responses_on_an_ack_server_lose_nothing(
    salesforce_factory: SalesforceFactory,
    fault_proxy_factory: ProxyFactory,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    server = salesforce_factory(ack=1, replay=0)
    proxy = await fault_proxy_factory(server.url)
    env = endpoint_env(tmp_path, proxy, server, exchange_name, replay="off", ack="on")
    async with running_bridge(env, tmp_path) as bridge:
        streaming = Streaming(server)
        await collector.wait_for(100, within=WAIT)
        await cut_while_streaming(proxy, collector, CUTS)
        count = await streaming.stop()
        await wait_for_seqs(collector, set(range(1, count + 1)))
        metrics = await bridge.metrics()
    report_duplicates(collector, record_property)
    assert metric(metrics, "possible_gaps_total") == 0


@pytest.mark.parametrize(
    ("kind", "connection_type"),
    [("salesforce", "long-polling"), ("faye", "websocket"), ("faye", "long-polling")],
)
async def test_cut_responses_without_replay_or_ack_are_counted_as_response_lost(
    kind: str,
    connection_type: str,
    salesforce_factory: SalesforceFactory,
    node_server_factory: NodeServerFactory,
    fault_proxy_factory: ProxyFactory,
    collector: QueueCollector,
    exchange_name: str,
    tmp_path: Path,
) -> None:
    server: NodeBayeuxServer
    if kind == "salesforce":
        server = salesforce_factory(replay=0)
    else:
        server = node_server_factory("faye", connection_type=connection_type)
    proxy = await fault_proxy_factory(server.url)
    env = endpoint_env(tmp_path, proxy, server, exchange_name, replay="off", ack="off")
    async with running_bridge(env, tmp_path) as bridge:
        streaming = Streaming(server)
        await collector.wait_for(100, within=WAIT)
        reports = await cut_while_streaming(proxy, collector, CUTS)
        count = await streaming.stop()
        cut = {s for r in reports for s in (*r.seqs, *r.trailing_seqs)}
        # What may be lost is what the server wrote into the connection the cut broke: the cut
        # message, what followed it before the reset, and over WebSocket what the server pushed
        # before it noticed the reset (bounded here by one second of streaming after the cut).
        at_risk = cut
        if connection_type == "websocket":
            at_risk = {
                s
                for r in reports
                for s in range(min(r.seqs), max((*r.seqs, *r.trailing_seqs)) + RATE + 1)
            }
        await wait_for_seqs(collector, set(range(1, count + 1)) - at_risk)
        await wait_gaps(bridge, CUTS)
        metrics = await bridge.metrics()
    lost = set(range(1, count + 1)) - set(seqs(collector))
    print(f"{kind} {connection_type}: {CUTS} cuts carried {len(cut)} events, {len(lost)} lost")
    if connection_type == "long-polling":  # one response per request: exactly what was cut
        assert lost <= cut, f"lost beyond the cut responses: {sorted(lost - cut)[:10]}"
    assert metric(metrics, "possible_gaps_total", reason="response_lost") == CUTS
    log = json.dumps(bridge.log_events())
    assert "response_lost" in log


async def wait_gaps(bridge: BridgeProcess, count: int) -> None:
    """Wait until ``possible_gaps_total{reason="response_lost"}`` reached ``count``."""
    deadline = time.monotonic() + WAIT
    current = 0.0
    while time.monotonic() < deadline:
        current = metric(await bridge.metrics(), "possible_gaps_total", reason="response_lost")
        if current >= count:
            return
        await asyncio.sleep(0.2)  # another process's metrics: polling is all there is
    raise AssertionError(
        f'possible_gaps_total{{reason="response_lost"}} = {current}, expected {count}\n'
        f"{bridge.log_tail()}"
    )
