"""Settings for several replicas: coordination, replica id, several broker URLs."""

from __future__ import annotations

import json
import socket

from bridge.settings import redacted_dump
from tests.unit.test_settings import SECRET, endpoints, load, only_problem


def test_coordination_defaults_to_file_and_the_replica_to_the_host_name() -> None:
    settings = load(endpoints())
    assert settings.coordination == "file"
    assert settings.replica_id == socket.gethostname()


def test_rabbitmq_coordination_and_a_replica_id() -> None:
    settings = load(
        {**endpoints(), "BRIDGE_COORDINATION": "rabbitmq", "BRIDGE_REPLICA_ID": "pod-7"}
    )
    assert settings.coordination == "rabbitmq"
    assert settings.replica_id == "pod-7"


def test_an_unknown_coordination_is_refused_by_name() -> None:
    variable, _message = only_problem({**endpoints(), "BRIDGE_COORDINATION": "zookeeper"})
    assert variable == "BRIDGE_COORDINATION"


def test_several_broker_urls_are_each_checked_and_each_password_masked() -> None:
    urls = f"amqp://u:{SECRET}@rabbit-0:5672/,amqps://u:{SECRET}@rabbit-1:5671/"
    settings = load({**endpoints(), "BRIDGE_AMQP_URL": urls})
    dumped = json.dumps(redacted_dump(settings))
    assert SECRET not in dumped
    assert "rabbit-0" in dumped
    assert "rabbit-1" in dumped
    variable, _message = only_problem(
        {**endpoints(), "BRIDGE_AMQP_URL": f"amqp://u:{SECRET}@rabbit-0/,http://rabbit-1/"}
    )
    assert variable == "BRIDGE_AMQP_URL"
