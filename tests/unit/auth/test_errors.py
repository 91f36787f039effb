"""Failure replies are classified by meaning, not by code alone, and auth reads them exactly
as the client library does (the same table, the same objects)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.auth import LIMIT_LABELS, FailureKind, classify_failure, limit_label
from bridge.cometd import protocol
from tests.unit.cometd.failure_cases import CASES, IDS, sfdc_denied


def test_auth_uses_the_client_librarys_classifier() -> None:
    assert classify_failure is protocol.classify_failure
    assert FailureKind is protocol.FailureKind
    assert limit_label is protocol.limit_label


@pytest.mark.parametrize(("reply", "kind", "limit"), CASES, ids=IDS)
def test_classification(reply: dict[str, Any], kind: FailureKind, limit: str | None) -> None:
    failure = classify_failure(reply)
    assert failure.kind is kind
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
