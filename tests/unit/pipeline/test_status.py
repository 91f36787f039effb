"""The observer: client events -> metrics and the /status entry (real Prometheus registry)."""

from __future__ import annotations

import structlog

from bridge.cometd.events import (
    AuthFailed,
    Connected,
    FetchPaused,
    FetchResumed,
    Handshaken,
    Reconnecting,
)
from bridge.metrics import Metrics
from bridge.pipeline.status import EndpointStatus, StatusObserver


def observer(
    *, up: bool = True, holding_full: bool = False, replay: bool = False
) -> tuple[StatusObserver, EndpointStatus, Metrics]:
    metrics = Metrics()
    status = EndpointStatus()
    obs = StatusObserver(
        metrics.endpoint("ep"),
        status,
        structlog.get_logger("test").bind(endpoint="ep"),
        is_up=lambda: up,
        holding_full=lambda: holding_full,
        replay_active=lambda: replay,
    )
    return obs, status, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"cometd_bridge_{name}", {"endpoint": "ep", **labels})
    return value or 0.0


def test_a_quota_refusal_counts_the_limit_and_a_lost_session() -> None:
    obs, status, metrics = observer()
    obs.observe(Handshaken("c1", "long-polling"))
    obs.observe(Reconnecting("quota", 60.0, "403::Organization concurrent user limit exceeded"))
    assert status.state == "reconnecting"
    assert status.reconnects == 1
    assert sample(metrics, "reconnects_total", reason="quota") == 1
    assert sample(metrics, "auth_limit_errors_total", limit="concurrent_clients") == 1
    obs.observe(Reconnecting("unknown_session", 0.5))
    assert sample(metrics, "possible_gaps_total", reason="session_lost") == 1


def test_a_replaying_server_loses_nothing_with_a_session() -> None:
    obs, _, metrics = observer(replay=True)
    obs.observe(Reconnecting("unknown_session", 0.5))
    assert sample(metrics, "possible_gaps_total", reason="session_lost") == 0


def test_fetch_paused_stays_shown_while_the_worker_ends_the_session() -> None:
    obs, status, metrics = observer(holding_full=True)
    obs.observe(FetchPaused(50))
    assert status.state == "paused"
    obs.observe(FetchResumed(10))
    assert sample(metrics, "fetch_paused") == 1, "the session is ending over a full buffer"
    assert status.state == "streaming"


def test_connected_shows_streaming_only_once_subscribed() -> None:
    obs, status, _ = observer(up=False)
    obs.observe(Connected())
    assert status.state == "starting"
    obs.observe(AuthFailed("401::Authentication invalid"))
    assert status.last_error == "authentication failed: 401::Authentication invalid"
