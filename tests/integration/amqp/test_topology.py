"""An exchange deleted under the publisher: no hot loop, the exchange is declared again."""

from __future__ import annotations

import itertools

import aio_pika
import aio_pika.abc
import pytest

from bridge.amqp import AmqpConnection, PublishResult
from tests.fixtures.rabbitmq import unique_name
from tests.integration.amqp.helpers import RecordingHooks, Results, message


pytestmark = pytest.mark.integration


async def test_deleted_exchange_is_redeclared_without_a_hot_loop(
    amqp_url: str, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    publisher = AmqpConnection(amqp_url, connection_name=unique_name("bridge-topology"))
    await publisher.start()
    exchange = unique_name("ex")
    try:
        await publisher.declare_exchange(exchange, "topic", auto_delete=False)
        admin = await amqp_connection.channel()
        queue = await admin.declare_queue(unique_name("q"), auto_delete=True)
        await queue.bind(exchange, "#")
        hooks = RecordingHooks()
        ep = await publisher.channel_for("ep", hooks=hooks)
        results = Results()
        for i in range(100):
            ep.submit(message(exchange, i), results)
        await results.wait_for(100, within=30)

        await admin.exchange_delete(exchange)
        # Every publish now closes the channel with 404 NOT_FOUND until the exchange is back.
        for i in range(100, 200):
            ep.submit(message(exchange, i), results)
        await results.wait_for(200, within=30)

        # Deleting the exchange removed its binding, so on the re-declared exchange the later
        # messages are returned (counted, logged), never lost; and the channel was lost a few
        # times, not thousands.
        assert all(r is PublishResult.CONFIRMED for _, r in _first(results, 100))
        later = {results.by_id[message(exchange, i).message_id] for i in range(100, 200)}
        assert later == {PublishResult.RETURNED}
        assert 1 <= hooks.failures["connection"] <= 5 * 100, hooks.failures
        await admin.declare_exchange(exchange, "topic", durable=True, passive=True)
    finally:
        with_channel = await amqp_connection.channel()
        await with_channel.exchange_delete(exchange)
        await publisher.close(5)


def _first(results: Results, n: int) -> list[tuple[int, PublishResult]]:
    return [(i, results.by_id[f"ep:/event/Order__e:r{i}"]) for i in range(n)]


async def test_publisher_backs_off_after_repeated_channel_losses(amqp_url: str) -> None:
    # The exchange never existed and nothing declares it: the channel is lost on every
    # attempt. The publisher keeps retrying (the message is never dropped), each time after a
    # longer pause: no hot loop, no giving up.
    publisher = AmqpConnection(amqp_url, connection_name=unique_name("bridge-topology"))
    await publisher.start()
    try:
        hooks = RecordingHooks()
        ep = await publisher.channel_for("ep", hooks=hooks)
        ep.submit(message(unique_name("missing"), 1), Results())
        await hooks.wait_failures("connection", 5, within=60)
    finally:
        await publisher.close(1)
    times = hooks.failure_times[:5]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Lower bounds only (they hold on any machine): each pause at least the back-off step
    # (0.05 s, doubling), so four retries take at least 0.1 + 0.2 + 0.4 = 0.7 s in all.
    assert times[-1] - times[0] >= 0.7, f"retries {gaps} s apart: a hot loop"
    assert gaps[-1] >= 0.4, f"the pause did not grow: {gaps}"
