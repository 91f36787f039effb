"""The publisher selector: the fast path only on tested aiormq versions, logged once."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from bridge.amqp.public_publisher import PublicApiPublisher
from bridge.amqp.publisher import AmqpSink
from bridge.amqp.sink_factory import (
    FAST_PATH_AIORMQ,
    choose_publisher_class,
    fast_path_names_present,
    installed_aiormq_version,
    publisher_choice,
)


@pytest.mark.parametrize("version", ["7.2.4", "7.2.5", "7.2.99", "7.2.10.post1"])
def test_tested_aiormq_versions_get_the_fast_publisher(version: str) -> None:
    cls, reason = publisher_choice(version)
    assert cls is AmqpSink
    assert version in reason


@pytest.mark.parametrize(
    "version", ["7.3.0", "7.3.0rc1", "7.2.3", "7.1", "8.0.0", "6.9.9", "7", "garbage", "", None]
)
def test_any_other_aiormq_gets_the_public_api_publisher(version: str | None) -> None:
    cls, reason = publisher_choice(version)
    assert cls is PublicApiPublisher
    assert ">=7.2.4,<7.3" in reason


def test_a_tested_version_lacking_a_taken_over_method_gets_the_public_publisher() -> None:
    cls, reason = publisher_choice("7.2.4", names_present=False)
    assert cls is PublicApiPublisher
    assert "_on_confirm_frame" in reason


def test_the_installed_aiormq_has_what_the_fast_path_takes_over() -> None:
    assert fast_path_names_present()


@pytest.mark.parametrize("version", ["7.2.4", "8.0.0", None])
def test_the_setting_forces_either_publisher(version: str | None) -> None:
    assert publisher_choice(version, "fast")[0] is AmqpSink
    assert publisher_choice(version, "public")[0] is PublicApiPublisher


def test_an_unknown_preference_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, fast, public"):
        publisher_choice("7.2.4", "quick")  # type: ignore[arg-type]


def test_the_aiormq_requirement_starts_where_the_fast_path_was_tested() -> None:
    # Older aiormq releases were never run with the fast path: the requirement excludes them.
    # Newer ones are allowed, as the public-API publisher takes over on them.
    project = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    (requirement,) = [d for d in project["project"]["dependencies"] if d.startswith("aiormq")]
    low = ".".join(map(str, FAST_PATH_AIORMQ[0]))
    assert requirement == f"aiormq>={low}"
    assert publisher_choice(low)[0] is AmqpSink
    assert installed_aiormq_version() is not None


def test_the_choice_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bridge.amqp"):
        assert choose_publisher_class("7.3.1") is PublicApiPublisher
        assert choose_publisher_class("7.2.4") is AmqpSink
    fallback, fast = caplog.records
    assert fallback.levelno == logging.WARNING
    assert "public API" in fallback.getMessage()
    assert "aiormq 7.3.1 is not tested" in fallback.getMessage()
    assert fast.levelno == logging.INFO
    assert "fast" in fast.getMessage()
