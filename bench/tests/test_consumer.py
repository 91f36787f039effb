"""The raw counting consumer against the real local RabbitMQ: every message counted exactly."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from bench.consumer import ConsumerError, RawConsumer


URL = os.environ.get("BRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

pytestmark = pytest.mark.integration


@pytest.fixture
async def topology() -> AsyncIterator[tuple[aio_pika.abc.AbstractExchange, str]]:
    name = f"bench-test-{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(URL)
    ch = await conn.channel(publisher_confirms=True)
    ex = await ch.declare_exchange(name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    q = await ch.declare_queue(name, auto_delete=True)
    await q.bind(ex, "#")
    try:
        yield ex, name
    finally:
        await conn.close()


async def test_counts_every_message_across_keys_sizes_and_frame_splits(
    topology: tuple[aio_pika.abc.AbstractExchange, str],
) -> None:
    ex, queue = topology
    consumer = RawConsumer(URL, queue)
    await consumer.start()
    try:
        assert consumer.server_properties.get("product") == b"RabbitMQ" or (
            consumer.server_properties.get("product") == "RabbitMQ"
        )
        # 300 KB bodies span several 128 KB frames; small ones share socket reads.
        consumer.expect({"k.a": 50, "k.b": 3})
        for seq in range(1, 51):
            body = f'{{"seq":{seq},"ts":1,"pad":"x"}}'.encode()
            await ex.publish(aio_pika.Message(body), "k.a")
        for seq in (1, 2, 3, 2):  # one duplicate
            body = f'{{"seq":{seq},"ts":1,"pad":"{"y" * 300_000}"}}'.encode()
            await ex.publish(aio_pika.Message(body), "k.b")
        assert await consumer.wait_complete(within=20)
        assert await consumer.wait_for(lambda c: c.received == 54, within=20)
        report = consumer.counter.report()
        assert report.missing == 0
        assert report.unexpected == 0
        assert report.distinct == 53
        assert report.duplicates == 1
        assert report.out_of_order == 0
    finally:
        await consumer.close()


async def test_wait_complete_reports_a_shortfall(
    topology: tuple[aio_pika.abc.AbstractExchange, str],
) -> None:
    ex, queue = topology
    consumer = RawConsumer(URL, queue)
    await consumer.start()
    try:
        consumer.expect({"k": 2})
        await ex.publish(aio_pika.Message(b'{"seq":1,"ts":1}'), "k")
        assert not await consumer.wait_complete(within=0.5)
        assert consumer.counter.report().missing == 1
    finally:
        await consumer.close()


async def test_a_missing_queue_fails_at_start() -> None:
    consumer = RawConsumer(URL, f"no-such-queue-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ConsumerError):
        await consumer.start()
    await consumer.close()
