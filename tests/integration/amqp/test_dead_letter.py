"""A message the broker nacks ``max_nacks`` times comes back ``REFUSED`` (the caller dead-letters
it); a dead letter itself is never given up on: published again while it is unroutable or
nacked, and never re-routed to the alternate exchange. Real RabbitMQ: a queue with
``x-max-length: 0`` and ``x-overflow: reject-publish`` makes the broker nack every publish."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika.abc
import pytest

from bridge.amqp import AmqpConnection, PublishResult
from bridge.pipeline.dead_letters import DeadLetter, dead_letter
from tests.fixtures.rabbitmq import unique_name
from tests.integration.amqp.helpers import (
    Collector,
    RecordingHooks,
    Results,
    bound_queue,
    message,
    started_publisher,
)


pytestmark = pytest.mark.integration

REFUSING = {"x-max-length": 0, "x-overflow": "reject-publish"}


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[AmqpConnection]:
    pub = await started_publisher(amqp_url)
    yield pub
    await pub.close(2)


def letter(exchange: str, n: int = 1) -> DeadLetter:
    return dead_letter(
        exchange=exchange,
        endpoint="ep",
        reason="unpublishable",
        error="ValueError: routing key is 300 bytes",
        channel="/event/Order__e",
        replay_id=n,
        now=1_700_000_000.0,
        body=b'{"n":%d}' % n,
        message_id=f"ep:/event/Order__e:r{n}",
    )


async def test_a_message_nacked_max_nacks_times_is_refused_not_retried(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    await bound_queue(amqp_connection, exchange, arguments=REFUSING)
    hooks = RecordingHooks()
    ep = await publisher.channel_for("ep", hooks=hooks, max_nacks=3)
    results = Results()

    ep.submit(message(exchange, 1), results)
    await results.wait_for(1, within=20)

    assert results.by_id == {message(exchange, 1).message_id: PublishResult.REFUSED}
    assert hooks.failures["nack"] == 3
    assert ep.outstanding == 0


async def test_without_max_nacks_a_nacked_message_is_retried(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    await bound_queue(amqp_connection, exchange, arguments=REFUSING)
    hooks = RecordingHooks()
    ep = await publisher.channel_for("ep", hooks=hooks)
    results = Results()

    ep.submit(message(exchange, 1), results)
    await hooks.wait_failures("nack", 4, within=20)

    assert results.calls == 0, "a nacked message was given up on without max_nacks"
    assert ep.outstanding == 1


async def test_an_unroutable_dead_letter_is_published_again_until_a_queue_takes_it(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    dlx = unique_name("dlx")
    alternate = unique_name("ae")
    await publisher.declare_exchange(dlx, "topic", auto_delete=True)
    await publisher.declare_exchange(alternate, "fanout", auto_delete=True)
    await bound_queue(amqp_connection, alternate)
    hooks = RecordingHooks()
    ep = await publisher.channel_for("ep", hooks=hooks, alternate_exchange=alternate, max_nacks=1)
    results = Results()

    ep.submit(letter(dlx), results)
    await hooks.wait_failures("unroutable", 2, within=20)
    assert results.calls == 0, "an unroutable dead letter was settled"

    queue = await bound_queue(amqp_connection, dlx)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    await results.wait_for(1, within=20)

    assert list(results.by_id.values()) == [PublishResult.CONFIRMED]
    await collector.wait_for({letter(dlx).message_id}, within=20)
    received = collector.messages[letter(dlx).message_id]
    assert received.body == b'{"n":1}'
    assert received.routing_key == "ep.unpublishable"
    assert received.headers["cometd-dead-letter-reason"] == "unpublishable"
    # Re-routed, it would have been confirmed as ALTERNATE: the alternate exchange routes.
    assert hooks.unroutable == {}, "a dead letter was counted or re-routed as unroutable"


async def test_a_dead_letter_is_retried_past_max_nacks(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    dlx = unique_name("dlx")
    await publisher.declare_exchange(dlx, "topic", auto_delete=True)
    await bound_queue(amqp_connection, dlx, arguments=REFUSING)
    hooks = RecordingHooks()
    ep = await publisher.channel_for("ep", hooks=hooks, max_nacks=2)
    results = Results()

    ep.submit(letter(dlx), results)
    await hooks.wait_failures("nack", 4, within=20)

    assert results.calls == 0, "a dead letter was refused after max_nacks"
    assert ep.outstanding == 1
