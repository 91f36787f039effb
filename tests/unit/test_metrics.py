"""Metrics: every contract name is exposed, once, with the contract's labels."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.auth import PrometheusAuthHooks
from bridge.metrics import RECONNECT_REASONS, Metrics


# name -> (type, label names) from docs/CONTRACTS.md
CONTRACT: dict[str, tuple[str, set[str]]] = {
    "cometd_bridge_build_info": ("info", {"version", "python"}),
    "cometd_bridge_amqp_connected": ("gauge", set()),
    "cometd_bridge_endpoint_up": ("gauge", {"endpoint"}),
    "cometd_bridge_endpoint_active": ("gauge", {"endpoint"}),
    "cometd_bridge_lease_changes_total": ("counter", {"endpoint", "reason"}),
    "cometd_bridge_pending_messages": ("gauge", {"endpoint"}),
    "cometd_bridge_pending_capacity_messages": ("gauge", {"endpoint"}),
    "cometd_bridge_inflight_messages": ("gauge", {"endpoint"}),
    "cometd_bridge_fetch_paused": ("gauge", {"endpoint"}),
    "cometd_bridge_messages_received_total": ("counter", {"endpoint"}),
    "cometd_bridge_messages_published_total": ("counter", {"endpoint"}),
    "cometd_bridge_publish_failures_total": ("counter", {"endpoint", "reason"}),
    "cometd_bridge_unroutable_total": ("counter", {"endpoint", "action"}),
    "cometd_bridge_malformed_messages_total": ("counter", {"endpoint", "reason"}),
    "cometd_bridge_dead_lettered_total": ("counter", {"endpoint", "reason"}),
    "cometd_bridge_reconnects_total": ("counter", {"endpoint", "reason"}),
    "cometd_bridge_handshakes_total": ("counter", {"endpoint", "result"}),
    "cometd_bridge_last_message_timestamp_seconds": ("gauge", {"endpoint"}),
    "cometd_bridge_publish_latency_seconds": ("histogram", {"endpoint"}),
    "cometd_bridge_token_refreshes_total": ("counter", {"credential", "result"}),
    "cometd_bridge_token_expiry_timestamp_seconds": ("gauge", {"credential"}),
    "cometd_bridge_auth_limit_errors_total": ("counter", {"endpoint", "limit"}),
    "cometd_bridge_replay_gaps_total": ("counter", {"endpoint", "channel"}),
    "cometd_bridge_possible_gaps_total": ("counter", {"endpoint", "reason"}),
    "cometd_bridge_replay_position_age_seconds": ("gauge", {"endpoint", "channel"}),
    "cometd_bridge_duplicates_redelivered_total": ("counter", {"endpoint"}),
}

SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum", "_info")
RUNTIME_PREFIXES = ("process_", "python_")


def exercise(m: Metrics) -> None:
    """Touch every labelled metric once so each has a sample."""
    ep = m.endpoint("orders")
    ep.up.set(1)
    ep.pending.set(3)
    ep.pending_capacity.set(1000)
    ep.inflight.set(2)
    ep.fetch_paused.set(0)
    ep.message_received(now=1700000000.0)
    ep.published.inc()
    ep.publish_failure("nack")
    ep.unroutable["logged"].inc()
    ep.malformed("bad_json")
    ep.dead_lettered("unpublishable")
    ep.reconnect("network")
    ep.handshake(success=True)
    ep.publish_latency.observe(0.004)
    ep.auth_limit("concurrent_users")
    ep.replay_gap("/event/Order__e")
    ep.possible_gap("session_expired")
    ep.duplicates_redelivered.inc()
    m.endpoint_active.labels("orders").set(1)
    m.lease_changes.labels("orders", "acquired").inc()
    # What the credential registry reports through PrometheusAuthHooks (the daemon's wiring).
    hooks = PrometheusAuthHooks(m.token_refreshes, m.token_expiry_timestamp)
    hooks.token_refreshed("orders", "success")
    hooks.token_expiry("orders", 1700003600.0)
    m.amqp_connected.set(1)
    m.set_position_source(lambda: [("orders", "/event/Order__e", 1700000000.0)])


def samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(registry).decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def family_types(registry: CollectorRegistry) -> dict[str, str]:
    text = generate_latest(registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [v for got, v in found[name] if all(got.get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, (name, labels, found.get(name))
    return matches[0]


def test_every_contract_metric_is_exposed_with_its_labels() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, version="1.2.3", clock=lambda: 1700000060.0)
    exercise(m)
    found = samples(registry)
    for name, (_kind, labels) in CONTRACT.items():
        key = name + "_bucket" if name.endswith("_seconds") and "latency" in name else name
        assert key in found, name
        for got, _ in found[key]:
            assert set(got) - {"le"} == labels, (name, got)


def test_types_and_no_extra_families() -> None:
    registry = CollectorRegistry()
    exercise(Metrics(registry, version="1.2.3"))
    # The text format also has a *_created gauge per counter/histogram; not ours to list.
    # process_* and python_* come from prometheus_client's own collectors (tested below).
    types = {
        k: v
        for k, v in family_types(registry).items()
        if k.startswith("cometd_bridge_") and not k.endswith("_created")
    }
    # Info is exposed as a gauge.
    expected = {name: "gauge" if kind == "info" else kind for name, (kind, _) in CONTRACT.items()}
    assert types == expected


def test_values_and_build_info() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, version="1.2.3", clock=lambda: 1700000060.0)
    exercise(m)
    found = samples(registry)
    build = found["cometd_bridge_build_info"][0][0]
    assert build["version"] == "1.2.3"
    assert re.fullmatch(r"\d+\.\d+\.\d+", build["python"])
    assert value(found, "cometd_bridge_messages_received_total", endpoint="orders") == 1
    assert value(found, "cometd_bridge_last_message_timestamp_seconds") == 1700000000.0
    assert value(found, "cometd_bridge_reconnects_total", reason="network") == 1
    assert value(found, "cometd_bridge_token_expiry_timestamp_seconds") == 1700003600.0
    assert value(found, "cometd_bridge_token_refreshes_total", result="success") == 1
    assert (
        value(found, "cometd_bridge_replay_position_age_seconds", channel="/event/Order__e") == 60
    )


def test_fixed_reason_series_start_at_zero() -> None:
    registry = CollectorRegistry()
    Metrics(registry).endpoint("idle")
    found = samples(registry)
    reasons = {labels["reason"] for labels, _ in found["cometd_bridge_reconnects_total"]}
    assert reasons == set(RECONNECT_REASONS)
    assert all(v == 0 for _, v in found["cometd_bridge_publish_failures_total"])
    assert {labels["result"] for labels, _ in found["cometd_bridge_handshakes_total"]} == {
        "success",
        "failure",
    }


def test_unknown_reason_is_a_bug_not_a_new_series() -> None:
    with pytest.raises(KeyError):
        Metrics(CollectorRegistry()).endpoint("e").reconnect("cosmic_rays")


def test_position_source_failure_does_not_break_the_scrape() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)

    def broken() -> Iterable[tuple[str, str, float]]:
        raise OSError("state dir gone")

    m.set_position_source(broken)
    assert "cometd_bridge_replay_position_age_seconds" not in samples(registry)
    assert b"cometd_bridge_build_info" in generate_latest(registry)


def test_fresh_registries_are_independent() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a).endpoint("x").received.inc(5)
    Metrics(b)
    assert "cometd_bridge_messages_received_total" not in samples(b)


def test_names_follow_the_prometheus_naming_guide() -> None:
    registry = CollectorRegistry()
    exercise(Metrics(registry))
    for name in samples(registry):
        if name.startswith(RUNTIME_PREFIXES):
            continue  # prometheus_client's process and platform collectors, named by it
        assert re.fullmatch(r"cometd_bridge_[a-z][a-z0-9_]*", name), name
        base = name
        for suffix in SUFFIXES:
            base = base.removesuffix(suffix)
        # No unit in the middle of a name; seconds is the only time unit.
        assert "_milliseconds" not in base
        assert "__" not in name


def test_process_and_platform_series_are_served() -> None:
    # A fresh registry has no default collectors: without them a dashboard cannot show the
    # bridge's memory, CPU or Python version next to its own series.
    registry = CollectorRegistry()
    Metrics(registry, version="1.2.3")
    found = samples(registry)
    (python,) = found["python_info"]
    assert python[0]["implementation"], python
    assert re.fullmatch(r"\d+\.\d+\.\d+", python[0]["version"]), python
    if not Path("/proc/self/stat").exists():
        # ProcessCollector reads /proc; it serves nothing where there is none.
        pytest.skip("no /proc on this platform: process_* series are not collected")
    (rss,) = found["process_resident_memory_bytes"]
    assert rss[1] > 1024 * 1024, rss  # a Python process with prometheus_client loaded
    assert "process_cpu_seconds_total" in found


async def test_a_candidate_replicas_lease_series_start_at_zero() -> None:
    # A coordinator that never held its endpoint: every lease-change reason is exposed at 0,
    # so the flapping alert's increase() counts a replica's first change too.
    from bridge.coordination import EndpointCoordinator
    from bridge.metrics import LEASE_CHANGE_REASONS

    async def never(*_args: object) -> int:
        raise AssertionError("not called by the constructor")

    registry = CollectorRegistry()
    EndpointCoordinator(
        "orders",
        connection=lambda: None,
        connected=asyncio.Event(),
        start_worker=never,  # type: ignore[arg-type]
        close_sink=never,
        metrics=Metrics(registry),
        publish_timeout=1.0,
        shutdown_timeout=1.0,
    )
    found = samples(registry)
    changes = {
        labels["reason"]: v
        for labels, v in found["cometd_bridge_lease_changes_total"]
        if labels["endpoint"] == "orders"
    }
    assert changes == dict.fromkeys(LEASE_CHANGE_REASONS, 0.0)
    assert found["cometd_bridge_endpoint_active"] == [({"endpoint": "orders"}, 0.0)]
