"""The dashboard and the alert rules use only metric names that exist.

Names are checked twice: against the metrics table of docs/CONTRACTS.md (the pinned
contract) and against what the daemon really serves on ``/metrics`` (``bridge.metrics``
behind ``bridge.http``, scraped over HTTP). A panel or alert on a misspelt or removed
metric shows nothing and never fires, and nobody notices until the day it is needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import pytest


ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "docs" / "CONTRACTS.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "cometd-bridge.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"

_NAME = re.compile(r"\bcometd_bridge_[a-z0-9_]+")
_CONTRACT_ROW = re.compile(r"^\| `(cometd_bridge_[a-z0-9_]+)` \| (\w+) \|", re.MULTILINE)
_TYPE_LINE = re.compile(r"^# TYPE (cometd_bridge_[a-z0-9_]+) (\w+)$", re.MULTILINE)

# What the operators asked to see on the dashboard (issue 7).
REQUIRED_ON_DASHBOARD = {
    "cometd_bridge_pending_messages",
    "cometd_bridge_pending_capacity_messages",
    "cometd_bridge_messages_received_total",
    "cometd_bridge_messages_published_total",
    "cometd_bridge_reconnects_total",
    "cometd_bridge_publish_latency_seconds_bucket",
    "cometd_bridge_token_refreshes_total",
    "cometd_bridge_endpoint_up",
    "cometd_bridge_unroutable_total",
    "cometd_bridge_replay_position_age_seconds",
    # Several replicas: who streams each endpoint, and how often that moves.
    "cometd_bridge_endpoint_active",
    "cometd_bridge_lease_changes_total",
}


def series_names(name: str, kind: str) -> set[str]:
    """The sample names PromQL can query for a metric ``name`` (as exposed) of ``kind``."""
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if kind == "summary":
        return {name, f"{name}_sum", f"{name}_count"}
    return {name}


def contract_series() -> set[str]:
    rows = _CONTRACT_ROW.findall(CONTRACTS.read_text(encoding="utf-8"))
    return {s for name, kind in rows for s in series_names(name, kind)}


def exposed_series(exposition: str) -> set[str]:
    """Sample names from the ``# TYPE`` lines of an exposition (labelled metrics with no
    children yet have no samples, but their family is still announced). The classic text
    format names counters with ``_total`` and info as a gauge ``_info``; OpenMetrics names the
    family without the suffix, so add it where missing."""
    names: set[str] = set()
    for family, kind in _TYPE_LINE.findall(exposition):
        if kind == "counter" and not family.endswith("_total"):
            names.add(f"{family}_total")
        elif kind == "info" and not family.endswith("_info"):
            names.add(f"{family}_info")
        else:
            names |= series_names(family, kind)
    return names


def referenced(paths: Iterable[Path]) -> set[str]:
    return {m for p in paths for m in _NAME.findall(p.read_text(encoding="utf-8"))}


def test_extraction_sees_names_and_rejects_unknown_ones() -> None:
    # Guards the checks below against passing vacuously (an empty parse is a subset of anything).
    contract = contract_series()
    assert len(contract) >= 20
    assert "cometd_bridge_publish_latency_seconds_bucket" in contract
    assert "cometd_bridge_publish_latency_seconds" not in contract
    assert _NAME.findall('rate(cometd_bridge_messages_recieved_total{a="b"}[5m])') == [
        "cometd_bridge_messages_recieved_total"
    ]
    assert "cometd_bridge_messages_recieved_total" not in contract


def test_dashboard_is_json_and_uses_only_contract_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "cometd-bridge"
    names = referenced([DASHBOARD])
    assert names, "the dashboard references no cometd_bridge_* metric"
    assert names <= contract_series(), f"not in docs/CONTRACTS.md: {names - contract_series()}"


def test_dashboard_shows_what_operators_asked_for() -> None:
    missing = REQUIRED_ON_DASHBOARD - referenced([DASHBOARD])
    assert not missing, f"no panel uses {missing}"


def test_alert_rules_and_their_tests_use_only_contract_metrics() -> None:
    names = referenced([ALERTS, ALERT_TESTS])
    assert names
    assert names <= contract_series(), f"not in docs/CONTRACTS.md: {names - contract_series()}"


@pytest.fixture
async def scraped_metrics() -> str:
    """``/metrics`` of the daemon's real HTTP app, with one endpoint, credential and stored
    position bound so that every labelled family is populated."""
    from prometheus_client import CollectorRegistry

    from bridge.http import bound_port, start_http_server
    from bridge.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    endpoint = metrics.endpoint("demo")
    endpoint.message_received()
    endpoint.malformed("bad_json")
    endpoint.auth_limit("concurrent_clients")
    endpoint.replay_gap("/event/Order__e")
    endpoint.possible_gap("unknown_session")
    metrics.token_refreshes.labels("sf", "success").inc()
    metrics.token_expiry_timestamp.labels("sf").set(2_000_000_000.0)
    metrics.set_position_source(lambda: [("demo", "/event/Order__e", 1_700_000_000.0)])
    runner = await start_http_server("127.0.0.1", 0, registry)
    try:
        url = f"http://127.0.0.1:{bound_port(runner)}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            return await response.text()
    finally:
        await runner.cleanup()


async def test_dashboard_and_alerts_use_only_metrics_the_daemon_serves(
    scraped_metrics: str,
) -> None:
    served = exposed_series(scraped_metrics)
    assert "cometd_bridge_build_info" in served
    assert "cometd_bridge_publish_latency_seconds_bucket" in served
    for path in (DASHBOARD, ALERTS, ALERT_TESTS):
        names = referenced([path])
        assert names <= served, (
            f"{path.name} uses metrics /metrics does not serve: {names - served}"
        )
