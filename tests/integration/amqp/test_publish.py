"""Confirmed publishing against a real RabbitMQ: volume, properties, API shapes, big bodies."""

from __future__ import annotations

import asyncio
import json

import aio_pika
import aio_pika.abc
import pytest

from bridge.amqp import AmqpConnection, PublishResult
from bridge.routing import Router
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


@pytest.fixture
async def publisher(amqp_url: str) -> AmqpConnection:
    pub = await started_publisher(amqp_url)
    yield pub  # type: ignore[misc]
    await pub.close(5)


async def test_thousands_confirmed_and_consumed_exactly_once(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    queue = await bound_queue(amqp_connection, exchange)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    hooks = RecordingHooks()
    ep = await publisher.channel_for("ep", hooks=hooks, max_inflight=256)

    n = 5000
    results = Results()
    for i in range(n):
        ep.submit(message(exchange, i), results)
    await results.wait_for(n)
    assert results.calls == n
    assert set(results.by_id.values()) == {PublishResult.CONFIRMED}

    ids = {message(exchange, i).message_id for i in range(n)}
    await collector.wait_for(ids)
    await queue.cancel(next(iter(queue._consumers)))  # stop consuming, then count leftovers
    declared = await queue.channel.declare_queue(queue.name, passive=True)
    assert declared.declaration_result.message_count == 0
    assert collector.duplicates == 0
    assert set(collector.counts) == ids
    assert not hooks.failures
    assert ep.inflight == 0
    assert ep.outstanding == 0

    got = collector.messages["ep:/event/Order__e:r1234"]
    want = message(exchange, 1234)
    assert got.body == want.body
    assert got.routing_key == "event.Order__e"
    assert got.exchange == exchange
    assert got.content_type == "application/json"
    assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert got.timestamp is not None
    assert got.timestamp.timestamp() == 1_700_000_000 + 1234
    assert got.headers == {
        "cometd-endpoint": "ep",
        "cometd-channel": "/event/Order__e",
        "cometd-id": "1234",
        "replay-id": 1234,
    }


async def test_future_api_with_routed_messages(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    queue = await bound_queue(amqp_connection, exchange)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    ep = await publisher.channel_for("ep")
    router = Router("ep", exchange)
    routed = [
        router.route({"channel": "/event/Order__e", "id": str(i), "data": {"n": i, "ok": True}})
        for i in range(50)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(ep.publish(m) for m in routed)), 30)
    assert results == [PublishResult.CONFIRMED] * 50
    await collector.wait_for({m.message_id for m in routed})
    got = collector.messages[routed[7].message_id]
    assert json.loads(got.body) == {"n": 7, "ok": True}
    assert got.headers["cometd-channel"] == "/event/Order__e"


async def test_body_larger_than_frame_max_is_split_and_reassembled(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    queue = await bound_queue(amqp_connection, exchange)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    ep = await publisher.channel_for("ep")
    big = b'{"blob":"' + bytes(range(65, 91)) * 20_000 + b'"}'  # ~520 KB, frame_max is 128 KB
    msgs = [message(exchange, 1, body=big), message(exchange, 2, body=b""), message(exchange, 3)]
    results = await asyncio.wait_for(asyncio.gather(*(ep.publish(m) for m in msgs)), 30)
    assert results == [PublishResult.CONFIRMED] * 3
    await collector.wait_for({m.message_id for m in msgs})
    assert collector.messages[msgs[0].message_id].body == big
    assert collector.messages[msgs[1].message_id].body == b""


async def test_same_message_id_is_never_in_flight_twice(
    publisher: AmqpConnection, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    queue = await bound_queue(amqp_connection, exchange)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    ep = await publisher.channel_for("ep")
    same = [message(exchange, i, mid="ep:/event/Order__e:hsame") for i in range(5)]
    futures = [ep.publish(m) for m in same]
    await asyncio.sleep(0)  # let the writer take its first batch
    assert ep.inflight == 1  # the other four wait for the first to settle
    assert await asyncio.wait_for(asyncio.gather(*futures), 30) == [PublishResult.CONFIRMED] * 5
    await collector.wait_count("ep:/event/Order__e:hsame", 5)


async def test_unencodable_message_fails_the_caller_at_once(publisher: AmqpConnection) -> None:
    ep = await publisher.channel_for("ep")
    with pytest.raises(ValueError, match="255"):
        ep.submit(message("x", 1, mid="m" * 300), lambda _m, _r: None)
    assert ep.outstanding == 0
