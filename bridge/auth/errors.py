"""Failure replies classified by meaning, not by code alone.

Servers disagree on codes: Faye says ``401:<id>:Unknown client`` for a lost session, Salesforce
``403::Unknown client``, and a Salesforce token expiry is ``401::Authentication invalid`` or a
``403::Handshake denied`` whose ``ext.sfdc.failureReason`` starts with ``401``. Re-authenticating
on every 401/403 (aiocometd) wastes token requests on session loss and hammers quota errors, so
each failure is mapped to the action it calls for:

- ``auth``: refresh the token (single-flight), then a fresh handshake;
- ``unknown_session``: re-handshake, keep the token;
- ``quota``: long backoff, a metric labelled with a bounded ``limit``, a log line naming it;
- ``other``: whatever the advice says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


__all__ = ["FailureKind", "Failure", "classify_failure", "limit_label", "LIMIT_LABELS"]


class FailureKind(StrEnum):
    AUTH = "auth"
    UNKNOWN_SESSION = "unknown_session"
    QUOTA = "quota"
    OTHER = "other"


#: Every value :func:`limit_label` can return (a bounded metric label).
LIMIT_LABELS = frozenset(
    {
        "concurrent_clients",
        "daily_events",
        "hourly_events",
        "subscriptions",
        "api_requests",
        "other",
    }
)

_ERROR = re.compile(r"^\s*(?P<code>\d{3})?:(?P<args>[^:]*):(?P<message>.*)$", re.DOTALL)
_AUTH_MESSAGES = ("authentication invalid", "request requires authentication", "invalid_token")
_SESSION_MESSAGES = ("unknown client", "unknown_session", "session_unknown", "unknown session")
_LIMIT_WORDS = ("limit exceeded", "limit reached", "quota", "too many")


@dataclass(frozen=True)
class Failure:
    """What a failed reply means. ``reason`` is the server's text, for logs; never a label."""

    kind: FailureKind
    code: int | None
    reason: str
    limit: str | None = None


def _split(error: str) -> tuple[int | None, str]:
    match = _ERROR.match(error)
    if match is None:
        return None, error.strip()
    code = match.group("code")
    return (int(code) if code else None), match.group("message").strip()


def _failure_reason(reply: Mapping[str, Any]) -> str | None:
    ext = reply.get("ext")
    sfdc = ext.get("sfdc") if isinstance(ext, Mapping) else None
    reason = sfdc.get("failureReason") if isinstance(sfdc, Mapping) else None
    return reason if isinstance(reason, str) and reason else None


def limit_label(message: str) -> str:
    """Map a quota/limit message to one of :data:`LIMIT_LABELS`."""
    text = message.lower()
    if "concurrent" in text:
        return "concurrent_clients"
    if "daily" in text:
        return "daily_events"
    if "hourly" in text:
        return "hourly_events"
    if "subscri" in text:
        return "subscriptions"
    if "request" in text or "api" in text:
        return "api_requests"
    return "other"


def classify_failure(reply: Mapping[str, Any]) -> Failure:
    """Classify an unsuccessful Bayeux reply (a dict with ``error`` and maybe ``ext``/``advice``).

    Salesforce's ``ext.sfdc.failureReason`` is more specific than ``error`` and wins.
    """
    error = reply.get("error")
    raw = _failure_reason(reply) or (error if isinstance(error, str) else "")
    code, message = _split(raw)
    text = message.lower()
    if any(word in text for word in _LIMIT_WORDS):
        return Failure(FailureKind.QUOTA, code, raw, limit_label(message))
    if any(word in text for word in _SESSION_MESSAGES):
        return Failure(FailureKind.UNKNOWN_SESSION, code, raw)
    if code == 401 or any(word in text for word in _AUTH_MESSAGES):
        return Failure(FailureKind.AUTH, code, raw)
    advice = reply.get("advice")
    if isinstance(advice, Mapping) and advice.get("reconnect") == "handshake":
        # CometD 5+ pairs unknown sessions with this advice whatever the wording.
        return Failure(FailureKind.UNKNOWN_SESSION, code, raw)
    return Failure(FailureKind.OTHER, code, raw)
