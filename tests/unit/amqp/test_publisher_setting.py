"""BRIDGE_AMQP_PUBLISHER: which publisher the endpoints get (auto, fast, public)."""

from __future__ import annotations

import json

import pytest

from bridge.settings import ConfigError, load_settings


ENDPOINTS = {"BRIDGE_ENDPOINTS": json.dumps({"orders": {"url": "http://x", "channels": ["/a"]}})}


def test_the_default_is_auto() -> None:
    assert load_settings(ENDPOINTS, secrets_dir=None).amqp_publisher == "auto"


@pytest.mark.parametrize("value", ["auto", "fast", "public"])
def test_each_choice_is_accepted(value: str) -> None:
    env = {**ENDPOINTS, "BRIDGE_AMQP_PUBLISHER": value}
    assert load_settings(env, secrets_dir=None).amqp_publisher == value


def test_anything_else_is_refused_naming_the_variable() -> None:
    env = {**ENDPOINTS, "BRIDGE_AMQP_PUBLISHER": "quick"}
    with pytest.raises(ConfigError) as err:
        load_settings(env, secrets_dir=None)
    assert "BRIDGE_AMQP_PUBLISHER" in str(err.value)
