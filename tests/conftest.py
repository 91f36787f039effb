"""Loads the shared fixture plugins for every test suite."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest


_FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Each part owns its plugin module in tests/fixtures/; one that is not written yet is skipped so
# the others keep working.
pytest_plugins = [
    f"tests.fixtures.{name}"
    for name in ("servers", "fake", "rabbitmq")
    if (_FIXTURES / f"{name}.py").is_file()
]


def _strict() -> bool:
    """On CI every prerequisite is installed by the pipeline: a skip means it is missing."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """With ``CI=true``, a skipped test (RabbitMQ, rabbitmqctl, rabbitmq-server, the Node
    servers, uvloop... missing) fails loudly instead: a CI without them must not go green on
    tests that never ran. Locally a skip stays a skip, with its reason in the summary."""
    outcome = yield
    report = outcome.get_result()
    if not (_strict() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped on CI (CI=true), a prerequisite is missing: {reason}"
