"""Error replies and what they mean: the one table both the client's decisions
(``tests/unit/cometd/test_protocol.py``) and the daemon's auth/quota handling
(``tests/unit/auth/test_errors.py``) are tested against, so they cannot disagree."""

from __future__ import annotations

from typing import Any

from bridge.cometd.protocol import FailureKind


def fail(error: Any, **extra: Any) -> dict[str, Any]:
    return {"channel": "/meta/connect", "successful": False, "error": error, **extra}


def sfdc_denied(reason: str) -> dict[str, Any]:
    return {
        "channel": "/meta/handshake",
        "successful": False,
        "error": "403::Handshake denied",
        "ext": {"sfdc": {"failureReason": reason}, "replay": True},
        "advice": {"reconnect": "none"},
    }


SESSION = FailureKind.UNKNOWN_SESSION
AUTH = FailureKind.AUTH
QUOTA = FailureKind.QUOTA
DENIED = FailureKind.DENIED
OTHER = FailureKind.OTHER

#: (reply, kind, limit label)
CASES: list[tuple[dict[str, Any], FailureKind, str | None]] = [
    # Lost sessions, as each server words them: re-handshake, no token refresh.
    (fail("402::session_unknown"), SESSION, None),  # CometD 5+
    (fail("402::unknown_session"), SESSION, None),  # CometD 4
    (fail("402::Unknown client"), SESSION, None),
    (fail("402:xj3sjdsjdsjad:Unknown Client ID"), SESSION, None),
    (fail("401:abc:Unknown client"), SESSION, None),  # Faye
    (fail("403::Unknown client", advice={"reconnect": "handshake"}), SESSION, None),  # Salesforce
    # Token expiry mid-session and at handshake.
    (fail("401::Authentication invalid", advice={"reconnect": "none"}), AUTH, None),
    (fail("401::Request requires authentication"), AUTH, None),
    (fail("403::invalid_token"), AUTH, None),
    (sfdc_denied("401::Authentication invalid"), AUTH, None),
    # Quotas and rate limits, whatever the code: a bounded limit label, never the raw text.
    (sfdc_denied("403::Organization concurrent user limit exceeded"), QUOTA, "concurrent_clients"),
    (fail("403::Organization total events daily limit exceeded"), QUOTA, "daily_events"),
    (fail("403::Organization total events hourly limit exceeded"), QUOTA, "hourly_events"),
    (fail("403::Maximum subscriptions limit exceeded"), QUOTA, "subscriptions"),
    (fail("403::Something new limit exceeded"), QUOTA, "other"),
    (fail("403::Too many requests"), QUOTA, "api_requests"),
    (fail("429::Too Many Requests"), QUOTA, "api_requests"),
    (fail("403::Daily API request limit reached"), QUOTA, "daily_events"),
    (fail("403::Streaming quota used up"), QUOTA, "other"),
    # Refusals that are none of the above follow the advice.
    (fail("403::Handshake denied"), DENIED, None),
    (fail("403::handshake_denied"), DENIED, None),
    (fail("403:c,/foo:Subscription denied"), DENIED, None),
    (fail("400::Invalid connection type"), OTHER, None),
    (fail("400::whatever", advice={"reconnect": "handshake"}), OTHER, None),
    (fail("400::The replayId {82} you provided was invalid."), OTHER, None),
    ({"channel": "/meta/connect", "successful": False}, OTHER, None),
    (fail("500::oops", ext="not a dict"), OTHER, None),
    (fail(42), OTHER, None),
]


def _id(reply: dict[str, Any]) -> str:
    ext = reply.get("ext")
    sfdc = ext.get("sfdc") if isinstance(ext, dict) else None
    reason = sfdc.get("failureReason") if isinstance(sfdc, dict) else None
    return str(reason or reply.get("error"))


#: The same table as pytest ids: the error text (or failureReason) of each case.
IDS = [_id(reply) for reply, *_ in CASES]
