"""Setting up the broker side at start, under trouble, real RabbitMQ: the connection reset in
the middle of declaring the topology (a proxy that resets after N bytes) and a dead-letter
queue that exists with other arguments (PRECONDITION_FAILED). Start completes once aio-pika
reconnected, or fails with an error that says what and why; nothing hangs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import aio_pika
import aio_pika.abc
import pytest

from bridge.amqp import AmqpConnection, PublishResult
from bridge.amqp.connection import EndpointSink, TopologyError
from tests.faults.proxy import UPSTREAM, FaultProxy
from tests.fixtures.rabbitmq import unique_name
from tests.integration.amqp.helpers import message


pytestmark = pytest.mark.integration


@dataclass
class Topology:
    """What the supervisor declares at start for one endpoint, with names of this test."""

    exchange: str
    dead_letters: str  # the dead-letter exchange and its queue, as for the default one

    @classmethod
    def fresh(cls) -> Topology:
        return cls(unique_name("ex"), unique_name("dl"))

    async def declare(self, conn: AmqpConnection) -> EndpointSink:
        await conn.declare_exchange(self.exchange, "topic", auto_delete=True)
        await conn.declare_exchange(self.dead_letters, "topic", auto_delete=True)
        await conn.declare_bound_queue(self.dead_letters, self.dead_letters)
        return await conn.channel_for("ep")

    async def remove(self, admin: aio_pika.abc.AbstractRobustConnection) -> None:
        channel = await admin.channel()
        await channel.queue_delete(self.dead_letters)
        await channel.exchange_delete(self.dead_letters)
        await channel.exchange_delete(self.exchange)
        await channel.close()


async def _through(proxy: FaultProxy, amqp_url: str, answer_within: float = 5) -> AmqpConnection:
    sep = "&" if "?" in amqp_url else "?"
    conn = AmqpConnection(
        f"{proxy.url_for(amqp_url)}{sep}reconnect_interval=0.2",
        connection_name=unique_name("bridge-setup"),
        publish_timeout=answer_within,
    )
    await conn.start()
    return conn


def _proxy(amqp_url: str) -> FaultProxy:
    """Started by ``async with``."""
    parts = urlsplit(amqp_url)
    return FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672, framing="raw")


async def _setup_bytes(amqp_url: str, admin: aio_pika.abc.AbstractRobustConnection) -> int:
    """How many bytes the client sends while declaring the topology (a run without faults)."""
    async with _proxy(amqp_url) as proxy:
        conn = await _through(proxy, amqp_url)
        topology = Topology.fresh()
        try:
            before = proxy.counters["bytes_upstream"]
            await topology.declare(conn)
            return proxy.counters["bytes_upstream"] - before
        finally:
            await conn.close(2)
            await topology.remove(admin)


@pytest.mark.parametrize("at", [0.05, 0.3, 0.6, 0.9])
async def test_a_reset_in_the_middle_of_the_topology_is_recovered_from(
    amqp_url: str, amqp_connection: aio_pika.abc.AbstractRobustConnection, at: float
) -> None:
    total = await _setup_bytes(amqp_url, amqp_connection)
    topology = Topology.fresh()
    async with _proxy(amqp_url) as proxy:
        conn = await _through(proxy, amqp_url)
        try:
            assert proxy.reset_after(int(total * at), UPSTREAM) == 1
            async with asyncio.timeout(60):  # no hung step
                ep = await topology.declare(conn)
            assert proxy.counters["resets"] == 1  # the reset landed in the middle
            assert proxy.counters["connections"] == 2  # and start went on after reconnecting
            assert ep.ready
            # Everything is declared: the dead-letter queue takes what its exchange gets.
            letter = message(topology.dead_letters, 1)
            assert await asyncio.wait_for(ep.publish(letter), 30) is PublishResult.CONFIRMED
            channel = await amqp_connection.channel()
            queue = await channel.declare_queue(topology.dead_letters, passive=True)
            got = await queue.get(timeout=10)
            assert got.message_id == letter.message_id
            await channel.declare_exchange(topology.exchange, passive=True)
        finally:
            await conn.close(2)
            await topology.remove(amqp_connection)


async def test_a_silent_link_while_declaring_fails_in_bounded_time_saying_why(
    amqp_url: str, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    # Nothing moves and nothing closes: without a bound, the declaration would wait forever.
    topology = Topology.fresh()
    async with _proxy(amqp_url) as proxy:
        conn = await _through(proxy, amqp_url, answer_within=1)
        try:
            proxy.stall()
            async with asyncio.timeout(30):
                with pytest.raises(TopologyError) as failed:
                    await topology.declare(conn)
            assert proxy.counters["stalls"] == 1
            text = str(failed.value)
            assert f"declaring exchange {topology.exchange!r}" in text
            assert "TimeoutError" in text
        finally:
            proxy.resume()
            await conn.close(2)
            await topology.remove(amqp_connection)


async def test_a_dead_letter_queue_with_other_arguments_is_a_clear_error(
    amqp_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The dead-letter queue an operator made by hand, with a length limit: the bridge's
    # declaration (durable, no arguments) is refused with PRECONDITION_FAILED.
    topology = Topology.fresh()
    channel = await amqp_connection.channel()
    await channel.declare_queue(topology.dead_letters, durable=True, arguments={"x-max-length": 7})
    conn = AmqpConnection(amqp_url, connection_name=unique_name("bridge-setup"))
    await conn.start()
    try:
        await conn.declare_exchange(topology.dead_letters, "topic", auto_delete=True)
        with caplog.at_level(logging.DEBUG, logger="bridge"):
            async with asyncio.timeout(30):  # refused at once, not retried until a timeout
                with pytest.raises(TopologyError) as refused:
                    await conn.declare_bound_queue(topology.dead_letters, topology.dead_letters)
        text = str(refused.value)
        assert f"queue {topology.dead_letters!r}" in text
        assert "PRECONDITION_FAILED" in text
        assert "x-max-length" in text
        assert refused.value.__cause__ is None  # the message says it all: no chained trace
        assert not [r for r in caplog.records if r.exc_info], "a stack trace was logged"
        assert not [r for r in caplog.records if "trying again" in r.getMessage()]
        # The refusal closed only its own channel: the connection goes on.
        assert conn.connected
        ep = await conn.channel_for("ep")
        assert ep.ready
    finally:
        await conn.close(2)
        await topology.remove(amqp_connection)
