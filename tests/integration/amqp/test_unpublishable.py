"""One message that cannot be encoded as AMQP never stops the endpoint's publishing."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aio_pika.abc
import pytest

from bridge.amqp import AmqpConnection, PublishResult
from tests.fixtures.rabbitmq import unique_name
from tests.integration.amqp.helpers import (
    Collector,
    Results,
    bound_queue,
    message,
    started_publisher,
)


pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[AmqpConnection]:
    pub = await started_publisher(amqp_url)
    yield pub
    await pub.close(5)


@dataclasses.dataclass
class MutableMessage:
    """A Publishable a caller may still change after submitting it (nothing forbids it)."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str
    timestamp: float


async def test_a_routing_key_over_255_bytes_is_refused_at_submit_and_publishing_goes_on(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    queue = await bound_queue(amqp_connection, exchange)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    ep = await publisher.channel_for("ep")
    results = Results()

    long_key = dataclasses.replace(message(exchange, 0), routing_key="k" * 256)
    with pytest.raises(ValueError, match="routing key is 256 bytes"):
        ep.submit(long_key, results)
    long_header = dataclasses.replace(message(exchange, 0), headers={"h" * 256: "v"})
    with pytest.raises(ValueError, match="header name"):
        ep.submit(long_header, results)
    assert ep.outstanding == 0

    for i in range(1, 11):
        ep.submit(message(exchange, i), results)
    await results.wait_for(10, within=30)
    assert set(results.by_id.values()) == {PublishResult.CONFIRMED}
    await collector.wait_for({message(exchange, i).message_id for i in range(1, 11)}, within=30)


async def test_the_writer_settles_a_message_it_cannot_encode_and_publishes_the_rest(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    queue = await bound_queue(amqp_connection, exchange)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    ep = await publisher.channel_for("ep")
    results = Results()

    good = [message(exchange, i) for i in range(20)]
    for m in good[:10]:
        ep.submit(m, results)
    base = message(exchange, 99)
    bad = MutableMessage(
        exchange, base.routing_key, base.body, base.headers, base.message_id, base.timestamp
    )
    ep.submit(bad, results)
    bad.routing_key = "x" * 300  # changed after submit: only the writer can find out
    for m in good[10:]:
        ep.submit(m, results)

    await results.wait_for(21, within=30)
    assert results.by_id[bad.message_id] is PublishResult.UNPUBLISHABLE
    assert {results.by_id[m.message_id] for m in good} == {PublishResult.CONFIRMED}
    assert ep.outstanding == 0
    await collector.wait_for({m.message_id for m in good}, within=30)

    # The writer is still alive: later messages are published too.
    later = message(exchange, 100)
    assert await ep.publish(later) is PublishResult.CONFIRMED
