"""The publisher under trouble, real RabbitMQ: forced disconnects, returns, nacks, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import pytest

from bridge.amqp import AmqpConnection, PublishResult
from tests.fixtures.rabbitmq import close_named_connections, unique_name
from tests.integration.amqp.helpers import (
    Collector,
    FullWindow,
    RecordingHooks,
    Results,
    bound_queue,
    message,
)
from tests.integration.amqp.proxy import BlackholeProxy


pytestmark = pytest.mark.integration


@pytest.fixture
async def named_publisher(amqp_url: str) -> tuple[AmqpConnection, str]:
    name = unique_name("bridge-fault")
    # A short reconnect interval keeps the disconnect test quick (aio-pika's default is 5 s).
    sep = "&" if "?" in amqp_url else "?"
    pub = AmqpConnection(
        f"{amqp_url}{sep}reconnect_interval=0.2", connection_name=name, publish_timeout=10
    )
    await pub.start()
    yield pub, name  # type: ignore[misc]
    await pub.close(5)


async def test_connection_closed_mid_stream_loses_nothing(
    named_publisher: tuple[AmqpConnection, str],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    publisher, name = named_publisher
    states: list[bool] = []
    publisher._on_state = states.append
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    queue = await bound_queue(amqp_connection, exchange)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    hooks = RecordingHooks()
    ep = await publisher.channel_for("ep", hooks=hooks, max_inflight=512)
    results = Results()

    # Keep the window full while the broker drops the connection.
    window = FullWindow(ep, exchange, results, at_least=30_000)
    await results.wait_for(3000)
    assert await close_named_connections(name) == 1
    window.fault_landed()
    await window.finished()
    submitted = window.submitted
    await results.wait_for(submitted)

    assert results.calls == submitted
    assert set(results.by_id.values()) == {PublishResult.CONFIRMED}
    ids = {message(exchange, i).message_id for i in range(submitted)}
    await collector.wait_for(ids)
    assert set(collector.counts) == ids  # zero missing
    # The close hit a full window: its messages were counted and published again.
    assert hooks.failures["connection"] > 0
    assert hooks.redelivered == hooks.failures["connection"]
    assert collector.duplicates <= hooks.redelivered
    assert False in states
    assert states[-1] is True
    assert publisher.connected
    print(
        f"\nsubmitted={submitted} redelivered={hooks.redelivered} duplicates={collector.duplicates}"
    )


async def test_unroutable_without_alternate_is_returned_counted_and_logged(
    named_publisher: tuple[AmqpConnection, str], caplog: pytest.LogCaptureFixture
) -> None:
    publisher, _ = named_publisher
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=False)
    hooks = RecordingHooks()
    ep = await publisher.channel_for("ep", hooks=hooks)
    try:
        with caplog.at_level(logging.WARNING, logger="bridge.amqp"):
            results = await asyncio.wait_for(
                asyncio.gather(*(ep.publish(message(exchange, i)) for i in range(3))), 30
            )
    finally:
        await _delete_exchange(publisher, exchange)
    assert results == [PublishResult.RETURNED] * 3
    assert hooks.unroutable == {"logged": 3}
    assert not hooks.failures
    logged = [r.getMessage() for r in caplog.records if "unroutable" in r.getMessage()]
    assert len(logged) == 3
    assert "message_id=ep:/event/Order__e:r1" in "".join(logged)
    assert f"exchange={exchange}" in logged[0]
    assert "routing_key=event.Order__e" in logged[0]
    assert ep.outstanding == 0


async def test_alternate_exchange_declared_on_the_exchange_routes_in_the_broker(
    named_publisher: tuple[AmqpConnection, str],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    publisher, _ = named_publisher
    exchange, alternate = unique_name("ex"), unique_name("ae")
    await publisher.declare_exchange(alternate, "fanout", auto_delete=True)
    await publisher.declare_exchange(exchange, "topic", alternate_exchange=alternate)
    try:
        ae_queue = await bound_queue(amqp_connection, alternate)
        collector = Collector()
        await ae_queue.consume(collector, no_ack=True)
        hooks = RecordingHooks()
        ep = await publisher.channel_for("ep", hooks=hooks, alternate_exchange=alternate)
        result = await asyncio.wait_for(ep.publish(message(exchange, 1)), 30)
        # With the AE on the exchange RabbitMQ routes it and acks: nothing comes back to us.
        assert result is PublishResult.CONFIRMED
        assert not hooks.unroutable
        await collector.wait_for({message(exchange, 1).message_id})
        assert collector.messages[message(exchange, 1).message_id].exchange == exchange
    finally:
        await _delete_exchange(publisher, exchange)


async def test_returned_message_is_republished_to_the_configured_alternate(
    named_publisher: tuple[AmqpConnection, str],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    publisher, _ = named_publisher
    exchange, alternate = unique_name("ex"), unique_name("ae")
    await publisher.declare_exchange(alternate, "fanout", auto_delete=True)
    # The exchange predates the AE setting (no alternate-exchange argument): returns happen.
    await publisher.declare_exchange(exchange, "topic")
    try:
        ae_queue = await bound_queue(amqp_connection, alternate)
        collector = Collector()
        await ae_queue.consume(collector, no_ack=True)
        hooks = RecordingHooks()
        ep = await publisher.channel_for("ep", hooks=hooks, alternate_exchange=alternate)
        msgs = [message(exchange, i) for i in range(20)]
        results = await asyncio.wait_for(asyncio.gather(*(ep.publish(m) for m in msgs)), 30)
        assert results == [PublishResult.ALTERNATE] * 20
        assert hooks.unroutable == {"alternate": 20}
        await collector.wait_for({m.message_id for m in msgs})
        got = collector.messages[msgs[3].message_id]
        assert got.exchange == alternate
        assert got.routing_key == "event.Order__e"
        assert got.body == msgs[3].body
    finally:
        await _delete_exchange(publisher, exchange)


async def test_nacked_messages_are_retried_until_the_broker_takes_them(
    named_publisher: tuple[AmqpConnection, str],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    publisher, _ = named_publisher
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    # A queue that refuses (nacks) publishes while it holds a message.
    queue = await bound_queue(
        amqp_connection, exchange, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    hooks = RecordingHooks()
    ep = await publisher.channel_for("ep", hooks=hooks)
    msgs = [message(exchange, i) for i in range(5)]
    results = Results()
    for m in msgs:
        ep.submit(m, results)
    await results.wait_for(1)  # the first fills the queue; the rest are being nacked
    await hooks.wait_failures("nack", 8)  # every one of the four, at least twice
    assert results.calls == 1

    # Drain one at a time: each freed slot lets one retry through.
    received: list[str] = []
    async with asyncio.timeout(60):
        while len(received) < 5:
            got = await queue.get(fail=False)
            if got is None:
                await results.wait_for(len(received) + 1)
                continue
            await got.ack()
            assert got.message_id is not None
            received.append(got.message_id)
    await results.wait_for(5)
    assert sorted(received) == sorted(m.message_id for m in msgs)
    assert set(results.by_id.values()) == {PublishResult.CONFIRMED}


async def test_close_waits_for_confirms_and_reports_what_is_left(
    named_publisher: tuple[AmqpConnection, str],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    publisher, _ = named_publisher
    exchange = unique_name("ex")
    await publisher.declare_exchange(exchange, "topic", auto_delete=True)
    queue = await bound_queue(amqp_connection, exchange)
    collector = Collector()
    await queue.consume(collector, no_ack=True)

    # Generous deadline: everything submitted before close() is confirmed.
    ep = await publisher.channel_for("drains")
    results = Results()
    for i in range(3000):
        ep.submit(message(exchange, i), results)
    assert ep.outstanding > 0
    assert await publisher.close_endpoint("drains", 30) == 0
    assert results.calls == 3000
    outcomes = Counter(results.by_id.values())
    assert outcomes == {PublishResult.CONFIRMED: 3000}, f"confirmed, not just done: {outcomes}"
    with pytest.raises(RuntimeError, match="closed"):
        ep.submit(message(exchange, 0), results)

    # No time at all: what was not confirmed is reported, and only that.
    ep2 = await publisher.channel_for("cut")
    results2 = Results()
    n = 20_000
    for i in range(n):
        ep2.submit(message(exchange, n + i), results2)
    left = await publisher.close_endpoint("cut", 0)
    assert left > 0
    assert results2.calls + left == n
    # What was reported done was confirmed; the rest is the count close() reported.
    outcomes2 = Counter(results2.by_id.values())
    assert outcomes2[PublishResult.CONFIRMED] == n - left, outcomes2


async def _delete_exchange(publisher: AmqpConnection, name: str) -> None:
    ch = await publisher.connection.channel(publisher_confirms=False)
    try:
        await ch.exchange_delete(name)
    finally:
        await ch.close()


@pytest.mark.parametrize("heartbeat", [1, 0], ids=["heartbeat", "no-heartbeat"])
async def test_blackholed_link_times_out_and_recovers(
    amqp_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    heartbeat: int,
) -> None:
    """Silence mid-stream: confirms stop, the timeout recycles the channel (and, with no
    heartbeat to notice, the connection), and everything arrives through a new connection."""
    parts = urlsplit(amqp_url)
    proxy = BlackholeProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    via_proxy = parts._replace(
        netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}",
        query=f"heartbeat={heartbeat}&reconnect_interval=0.2",
    ).geturl()
    publisher = AmqpConnection(via_proxy, connection_name=unique_name("bh"), publish_timeout=1)
    await publisher.start()
    try:
        exchange = unique_name("ex")
        await publisher.declare_exchange(exchange, "topic", auto_delete=True)
        queue = await bound_queue(amqp_connection, exchange)
        collector = Collector()
        await queue.consume(collector, no_ack=True)
        hooks = RecordingHooks()
        ep = await publisher.channel_for("ep", hooks=hooks)
        results = Results()
        for i in range(100):
            ep.submit(message(exchange, i), results)
        await results.wait_for(100)
        assert proxy.blackhole() == 1
        for i in range(100, 200):
            ep.submit(message(exchange, i), results)
        await results.wait_for(200, within=60)
        assert hooks.failures["timeout"] >= 1
        ids = {message(exchange, i).message_id for i in range(200)}
        await collector.wait_for(ids)
        assert set(results.by_id.values()) == {PublishResult.CONFIRMED}
    finally:
        await publisher.close(5)
        await proxy.close()
