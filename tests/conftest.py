"""Loads the shared fixture plugins for every test suite."""

from __future__ import annotations

from pathlib import Path


_FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Each part owns its plugin module in tests/fixtures/; one that is not written yet is skipped so
# the others keep working.
pytest_plugins = [
    f"tests.fixtures.{name}"
    for name in ("servers", "fake", "rabbitmq")
    if (_FIXTURES / f"{name}.py").is_file()
]
