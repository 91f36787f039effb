"""Every alert's ``runbook_url`` opens a section that exists.

An on-call engineer follows the link from the page at 3 a.m.; a link to a renamed or missing
heading lands on the top of a long file. The anchors are computed the way GitHub (and most
Markdown renderers) derive them from headings, and the PrometheusRule carries the same rules
(test_kubernetes.py), so checking alerts.yml covers both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest


yaml = pytest.importorskip("yaml", reason="pyyaml (dev extra) is needed to read the rules")

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOKS = ROOT / "deploy" / "README.md"

_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")


def github_anchors(markdown: str) -> set[str]:
    """The anchors a renderer gives the headings: lower case, punctuation dropped (``-`` and
    ``_`` kept), spaces to ``-``; a repeated slug gets ``-1``, ``-2``…. Lines in fenced code
    blocks are not headings."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else _HEADING.match(line)
        if match is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_anchor_derivation() -> None:
    # Guards the check below against passing on a parse that finds everything or nothing.
    text = (
        "# Deploying\n## Changing replay positions (`positions set|clear`)\n"
        "### Kubernetes\n```sh\n# not a heading\n```\n### Kubernetes\n"
    )
    assert github_anchors(text) == {
        "deploying",
        "changing-replay-positions-positions-setclear",
        "kubernetes",
        "kubernetes-1",
    }


def test_every_alert_has_a_runbook_url_to_a_section_of_deploy_readme() -> None:
    anchors = github_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    rules = alert_rules()
    assert len(rules) >= 10
    problems = []
    for rule in rules:
        name, url = rule["alert"], rule.get("annotations", {}).get("runbook_url", "")
        parts = urlsplit(url)
        if not parts.path.endswith("deploy/README.md"):
            problems.append(f"{name}: runbook_url {url!r} does not point into deploy/README.md")
        elif parts.fragment not in anchors:
            problems.append(f"{name}: no heading with anchor #{parts.fragment} in deploy/README.md")
    assert not problems, "\n".join(problems)


def test_each_alert_has_its_own_runbook_section() -> None:
    # One alert, one section: a shared section makes the reader hunt for their alert.
    fragments = [urlsplit(r["annotations"]["runbook_url"]).fragment for r in alert_rules()]
    assert len(set(fragments)) == len(fragments), fragments
