"""Every publisher test here runs against both publishers: the fast one and the public-API one.

A test that talks to RabbitMQ (it uses ``amqp_url``) is run once per implementation; the
connection owner (``AmqpConnection.channel_for``) builds the one under test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import bridge.amqp.connection
from bridge.amqp.sink_factory import PublisherClass, publisher_choice


IMPLEMENTATIONS = ("fast", "public")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "amqp_url" in metafunc.fixturenames:
        metafunc.parametrize("publisher_class", IMPLEMENTATIONS, indirect=True)


@pytest.fixture(autouse=True)
def publisher_class(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PublisherClass | None]:
    """The publisher class under test, chosen as ``BRIDGE_AMQP_PUBLISHER`` would choose it."""
    impl = getattr(request, "param", None)
    if impl is None:  # a test that publishes nothing
        yield None
        return
    cls, _ = publisher_choice(None, impl)
    # Until the connection owner takes its publisher class from the selector, swap the class
    # it builds endpoints with.
    monkeypatch.setattr(bridge.amqp.connection, "AmqpSink", cls)
    yield cls
