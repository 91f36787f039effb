"""The publishing channel broken under the writer, real RabbitMQ: closed by the broker in the
middle of a batch (a publish to a missing exchange: 404 NOT_FOUND), or closed by someone else
while the window is full. The sink re-attaches to the channel aio-pika reopens, publishes its
unconfirmed messages again, and never reports a message confirmed that the broker did not
confirm (each one reported confirmed is looked for in a real queue)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import aio_pika.abc
import pytest

from bridge.amqp import AmqpConnection, PublishResult
from bridge.amqp.connection import EndpointSink
from tests.fixtures.rabbitmq import unique_name
from tests.integration.amqp.helpers import (
    Collector,
    FullWindow,
    RecordingHooks,
    Results,
    bound_queue,
    message,
)


pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[tuple[AmqpConnection, list[bool]]]:
    states: list[bool] = []
    sep = "&" if "?" in amqp_url else "?"
    pub = AmqpConnection(
        f"{amqp_url}{sep}reconnect_interval=0.2",
        connection_name=unique_name("bridge-channel-fault"),
        on_state=states.append,
    )
    await pub.start()
    yield pub, states
    await pub.close(5)


async def _consumed_sink(
    pub: AmqpConnection, conn: aio_pika.abc.AbstractRobustConnection
) -> tuple[str, Collector, RecordingHooks, EndpointSink, Results]:
    """A fresh exchange with a queue consumed into a collector, and an endpoint's sink on it
    (with recording hooks and a results recorder for its ``done`` calls)."""
    exchange = unique_name("ex")
    await pub.declare_exchange(exchange, "topic", auto_delete=True)
    collector = Collector()
    queue = await bound_queue(conn, exchange)
    await queue.consume(collector, no_ack=True)
    hooks = RecordingHooks()
    ep = await pub.channel_for("ep", hooks=hooks, max_inflight=512)
    return exchange, collector, hooks, ep, Results()


def _robust_channel(sink: EndpointSink) -> aio_pika.abc.AbstractRobustChannel:
    """The sink's robust channel (the test closes its current underlay from outside)."""
    channel = sink._channel
    assert channel is not None
    return channel


async def test_a_publish_to_a_missing_exchange_mid_batch_loses_and_fakes_nothing(
    publisher: tuple[AmqpConnection, list[bool]],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    pub, states = publisher
    exchange, collector, hooks, ep, results = await _consumed_sink(pub, amqp_connection)
    missing = unique_name("missing")
    for i in range(100):
        ep.submit(message(exchange, i), results)
    await results.wait_for(100, within=30)

    # One write: 200 messages, one to an exchange that does not exist, 200 more. The broker
    # closes the channel at the bad one and drops what follows it unconfirmed.
    for i in range(100, 300):
        ep.submit(message(exchange, i), results)
    odd = message(missing, 10_000)
    ep.submit(odd, results)
    for i in range(300, 500):
        ep.submit(message(exchange, i), results)
    await hooks.wait_failures("connection", 1, within=30)
    assert hooks.redelivered >= 1, "the channel closed with nothing unconfirmed on it"
    # It keeps failing on the missing exchange (retried after a growing back-off, never
    # reported done); once the exchange exists it goes through.
    await hooks.wait_failures("connection", 2, within=30)
    assert odd.message_id not in results.by_id
    admin = await amqp_connection.channel()
    # Its alternate exchange has the bound queue: routed from the moment it exists.
    await admin.declare_exchange(
        missing, "topic", auto_delete=True, arguments={"alternate-exchange": exchange}
    )
    try:
        await results.wait_for(501, within=60)
    finally:
        await admin.exchange_delete(missing)

    ids = {message(exchange, i).message_id for i in range(500)} | {odd.message_id}
    assert results.calls == 501
    assert set(results.by_id) == ids
    assert set(results.by_id.values()) == {PublishResult.CONFIRMED}
    await collector.wait_for(ids, within=30)  # every one reported confirmed is in a queue
    assert ep.ready
    assert False not in states, "one endpoint's bad publish took the whole connection down"


async def test_the_channel_closed_under_a_full_window_loses_and_fakes_nothing(
    publisher: tuple[AmqpConnection, list[bool]],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    pub, states = publisher
    exchange, collector, hooks, ep, results = await _consumed_sink(pub, amqp_connection)
    window = FullWindow(ep, exchange, results, at_least=5_000)
    await results.wait_for(2000, within=30)
    underlay = await _robust_channel(ep).get_underlay_channel()
    await underlay.close()
    window.fault_landed()
    await window.finished()
    submitted = window.submitted
    await results.wait_for(submitted, within=60)

    assert hooks.failures["connection"] >= 1, hooks.failures
    assert hooks.redelivered >= 1
    ids = {message(exchange, i).message_id for i in range(submitted)}
    assert results.calls == submitted
    assert set(results.by_id) == ids
    assert set(results.by_id.values()) == {PublishResult.CONFIRMED}
    await collector.wait_for(ids, within=30)
    assert collector.duplicates <= hooks.redelivered
    assert ep.ready
    # Closed from outside, the channel reads open to the writer until the broker's close-ok
    # arrives; a batch written meanwhile makes the broker close the whole connection (504),
    # which is recovered from like any connection loss.
    assert pub.connected
    assert states[-1] is True
