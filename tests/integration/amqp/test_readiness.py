"""``ready`` follows the channel: true again once aio-pika restored it after a connection loss."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bridge.amqp import AmqpConnection, PublishResult
from bridge.amqp.sink_factory import PublisherClass
from tests.fixtures.rabbitmq import close_named_connections, unique_name
from tests.integration.amqp.helpers import message


pytestmark = pytest.mark.integration


async def _until(what: str, condition: Callable[[], bool], within: float = 15) -> None:
    # ``ready`` is a property with no event behind it: look at it every 20 ms, bounded.
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"publisher not {what} within {within} s")


async def test_an_idle_publisher_is_ready_again_after_a_connection_loss(
    amqp_url: str, publisher_class: PublisherClass
) -> None:
    name = unique_name("bridge-ready")
    sep = "&" if "?" in amqp_url else "?"
    lost, back = asyncio.Event(), asyncio.Event()

    def on_state(connected: bool) -> None:
        if not connected:
            lost.set()
        elif lost.is_set():
            back.set()

    publisher = AmqpConnection(
        f"{amqp_url}{sep}reconnect_interval=0.2", connection_name=name, on_state=on_state
    )
    await publisher.start()
    try:
        exchange = unique_name("ex")
        await publisher.declare_exchange(exchange, "topic", auto_delete=True)
        ep = await publisher.channel_for("ep")
        assert ep.ready
        assert await close_named_connections(name) == 1
        async with asyncio.timeout(30):
            await lost.wait()
            await back.wait()  # the connection is back; the channel is restored after it
        await _until("ready again with nothing to publish", lambda: ep.ready)
        # And it publishes on the restored channel.
        result = await asyncio.wait_for(ep.publish(message(exchange, 1)), 30)
        assert result is PublishResult.RETURNED  # no queue bound: returned, not lost
    finally:
        await publisher.close(5)
