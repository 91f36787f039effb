"""Failure replies are classified by meaning (issue 5), not by code alone."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.auth import LIMIT_LABELS, FailureKind, classify_failure, limit_label


SESSION = "unknown_session"
QUOTA = "quota"


def sfdc_denied(reason: str) -> dict[str, Any]:
    return {
        "channel": "/meta/handshake",
        "successful": False,
        "error": "403::Handshake denied",
        "ext": {"sfdc": {"failureReason": reason}, "replay": True},
        "advice": {"reconnect": "none"},
    }


@pytest.mark.parametrize(
    ("reply", "kind", "limit"),
    [
        # Salesforce token expiry mid-session and at handshake.
        ({"error": "401::Authentication invalid", "advice": {"reconnect": "none"}}, "auth", None),
        (sfdc_denied("401::Authentication invalid"), "auth", None),
        ({"error": "401::Request requires authentication"}, "auth", None),
        # Lost sessions, as each server words them: re-handshake, no token refresh.
        (
            {"error": "403::Unknown client", "advice": {"reconnect": "handshake"}},
            "unknown_session",
            None,
        ),
        ({"error": "401:abc123:Unknown client"}, SESSION, None),  # Faye
        ({"error": "402::session_unknown"}, SESSION, None),  # CometD 5+
        ({"error": "402::unknown_session"}, SESSION, None),  # CometD 4
        ({"error": "402:x:Unknown Client ID"}, SESSION, None),
        ({"error": "400::whatever", "advice": {"reconnect": "handshake"}}, SESSION, None),
        # Quotas: a bounded limit label, never the raw text.
        (
            sfdc_denied("403::Organization concurrent user limit exceeded"),
            "quota",
            "concurrent_clients",
        ),
        ({"error": "403::Organization total events daily limit exceeded"}, QUOTA, "daily_events"),
        (
            {"error": "403::Organization total events hourly limit exceeded"},
            "quota",
            "hourly_events",
        ),
        ({"error": "403::Maximum subscriptions limit exceeded"}, QUOTA, "subscriptions"),
        ({"error": "403::Something new limit exceeded"}, QUOTA, "other"),
        # The rest follows the advice.
        ({"error": "403::Handshake denied"}, "other", None),
        ({"error": "400::Invalid connection type"}, "other", None),
        ({"error": "403:/foo:Subscription denied"}, "other", None),
        ({}, "other", None),
        ({"error": 42}, "other", None),
    ],
)
def test_classification(reply: dict[str, Any], kind: str, limit: str | None) -> None:
    failure = classify_failure(reply)
    assert failure.kind == FailureKind(kind)
    assert failure.limit == limit


def test_code_and_reason_are_parsed() -> None:
    failure = classify_failure(sfdc_denied("401::Authentication invalid"))
    assert failure.code == 401
    assert failure.reason == "401::Authentication invalid"


@pytest.mark.parametrize(
    "text", ["", "x", "limit exceeded", "Daily API request limit", "concurrent", "🙂" * 50]
)
def test_limit_labels_are_bounded(text: str) -> None:
    assert limit_label(text) in LIMIT_LABELS
