"""Structural checks promtool does not make on deploy/prometheus (run by deploy/validate.sh).

Every alert carries a severity, a runbook and a runbook_url (tests/deploy/test_alert_runbooks.py
checks the URL reaches a heading of deploy/README.md), the alerts operators asked for exist, and
alerts.test.yml has at least one firing and one not-firing case for every alert. Needs
PyYAML (installed in .venv-deploy by validate.sh). Exit status 1 lists every problem.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


HERE = Path(__file__).resolve().parent / "prometheus"
SEVERITIES = {"critical", "warning"}
ANNOTATIONS = ("summary", "description", "runbook", "runbook_url")
# The conditions issue 7 asks to alert on, by the alert that covers each.
REQUIRED = {
    "CometdBridgeTargetDown": "bridge process down",
    "CometdBridgeEndpointDown": "endpoint down",
    "CometdBridgeStalled": "no messages for too long while subscribed",
    "CometdBridgeBufferNearFull": "buffer near full",
    "CometdBridgePublishFailures": "publish failures",
    "CometdBridgeUnroutable": "unroutable messages",
    "CometdBridgeTokenRefreshFailing": "token refresh failing",
    "CometdBridgeTokenNearExpiry": "token near expiry",
    "CometdBridgeReplayPositionAging": "replay position approaching retention",
    "CometdBridgeAmqpDisconnected": "AMQP disconnected",
    # Several replicas (BRIDGE_COORDINATION=rabbitmq).
    "CometdBridgeNoActiveOwner": "no replica owns an endpoint for over a minute",
    "CometdBridgeLeaseFlapping": "an endpoint's lease keeps moving",
}


def load(name: str) -> Any:
    return yaml.safe_load((HERE / name).read_text(encoding="utf-8"))


def problems() -> list[str]:
    found: list[str] = []
    rules = [r for group in load("alerts.yml")["groups"] for r in group["rules"] if "alert" in r]
    names = [r["alert"] for r in rules]
    found += [f"duplicate alert {n}" for n in sorted({n for n in names if names.count(n) > 1})]
    for rule in rules:
        name = rule["alert"]
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            found.append(f"{name}: labels.severity must be one of {sorted(SEVERITIES)}")
        annotations = rule.get("annotations", {})
        found += [
            f"{name}: annotations.{key} is missing or empty"
            for key in ANNOTATIONS
            if not str(annotations.get(key, "")).strip()
        ]
    found += [f"no alert for {what} ({n})" for n, what in REQUIRED.items() if n not in names]

    firing: set[str] = set()
    quiet: set[str] = set()
    for test in load("alerts.test.yml")["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    found += [f"{n}: no promtool test where it fires" for n in names if n not in firing]
    found += [f"{n}: no promtool test where it stays quiet" for n in names if n not in quiet]
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(f"alert rules: {problem}", file=sys.stderr)
    if not found:
        print("alert rules: severity, runbook and firing/quiet tests present for every alert")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
