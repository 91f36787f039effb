"""A message the bridge cannot publish goes to the endpoint's dead-letter exchange with its bytes
and headers naming the endpoint, channel, reason and error; the replay position moves over it
only once the dead letter is confirmed. Real RabbitMQ (a queue bound to the dead-letter
exchange reads the dead letters; a queue with ``x-max-length: 0`` and ``reject-publish`` makes
the broker nack), the supervisor in-process, the scriptable fake Bayeux server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import pytest

from bridge.supervisor import Supervisor
from tests.e2e.harness import QueueCollector
from tests.e2e.inprocess import endpoint_up, eventually, metric, running_supervisor
from tests.e2e.test_endpoint_message_faults import (
    LONG,
    PREFIX,
    SHORT,
    malformed,
    nested_json,
    poison_first,
)
from tests.fakes.fake_bayeux import FakeBayeux, patch_reply
from tests.fixtures.rabbitmq import unique_name


pytestmark = pytest.mark.integration


class DeadLetters:
    """A queue bound with ``#`` to a dead-letter exchange, recording what reaches it."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, exchange: str) -> None:
        self._channel = channel
        self._exchange = exchange
        self.messages: list[aio_pika.abc.AbstractIncomingMessage] = []
        self._arrived = asyncio.Event()

    async def bind(self) -> None:
        queue = await self._channel.declare_queue(unique_name("dl"), exclusive=True)
        await queue.bind(self._exchange, "#")
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def wait_for(self, n: int, within: float = 20) -> None:
        try:
            async with asyncio.timeout(within):
                while len(self.messages) < n:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"{len(self.messages)} of {n} dead letters within {within} s"
            ) from None


@pytest.fixture
async def dead_letters(
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> AsyncIterator[DeadLetters]:
    channel = await amqp_connection.channel()
    name = unique_name("dlx")
    yield DeadLetters(channel, name)
    # Declared durable by the bridge: remove it, as nothing else will.
    cleanup = await amqp_connection.channel()
    await cleanup.exchange_delete(name)


def sample(sup: Supervisor, name: str, **labels: str) -> float:
    return metric(sup, name, endpoint="ep", **labels)


def position(sup: Supervisor, channel: str) -> Any:
    positions = sup.status()["endpoints"]["ep"].get("positions", {})
    return positions.get(channel, {}).get("replay_id")


def replay_endpoint(fake_bayeux: FakeBayeux, exchange: str, **extra: Any) -> dict[str, Any]:
    fake_bayeux.on("/meta/handshake", patch_reply(ext={"replay": True}))
    return {
        "url": fake_bayeux.url,
        "channels": [SHORT, LONG],
        "connection_types": "long-polling",
        "exchange": exchange,
        # {channel_path} of LONG makes a routing key over AMQP's 255 bytes: unpublishable.
        "routing_key": PREFIX + ".{channel_path}",
        "replay": "stored",
        "replay_fallback": "new",
        **extra,
    }


async def test_a_poison_event_is_dead_lettered_and_the_position_moves_over_it_only_after(
    amqp_url: str,
    fake_bayeux: FakeBayeux,
    exchange_name: str,
    collector: QueueCollector,
    dead_letters: DeadLetters,
    tmp_path: Path,
) -> None:
    endpoint = replay_endpoint(
        fake_bayeux, exchange_name, dead_letter_exchange=dead_letters._exchange
    )
    async with running_supervisor(amqp_url, tmp_path, {"ep": endpoint}) as sup:
        await endpoint_up(sup)
        fake_bayeux.publish(LONG, {"event": {"replayId": 4}, "seq": 4})
        for rid in (1, 2, 3):
            fake_bayeux.publish(SHORT, {"event": {"replayId": rid}, "seq": rid})
        await collector.wait_for(3, within=20)

        # No queue is bound to the dead-letter exchange yet: the broker returns the dead
        # letter, it is published again, and the position of its channel waits.
        failures = "cometd_bridge_publish_failures_total"
        await eventually(
            lambda: sample(sup, failures, reason="unroutable") >= 2, 20, "dead letter retried"
        )
        await eventually(lambda: position(sup, SHORT) == 3, 15, "the good events' position")
        assert position(sup, LONG) is None, "the position moved before the dead letter was kept"
        assert malformed(sup, "unpublishable") == 1
        dead_lettered = "cometd_bridge_dead_lettered_total"
        assert sample(sup, dead_lettered, reason="unpublishable") == 0

        await dead_letters.bind()
        await dead_letters.wait_for(1)
        await eventually(lambda: position(sup, LONG) == 4, 15, "the position moved over it")
        assert sample(sup, dead_lettered, reason="unpublishable") == 1
        assert sup.workers["ep"].status.restarts == 0, "the session did not end over it"

    letter = dead_letters.messages[0]
    headers = letter.headers
    assert headers["cometd-endpoint"] == "ep"
    assert headers["cometd-channel"] == LONG
    assert headers["cometd-dead-letter-reason"] == "unpublishable"
    assert "routing key" in str(headers["cometd-dead-letter-error"])
    assert "cometd-dead-letter-truncated" not in headers
    assert letter.routing_key == "ep.unpublishable"
    original = json.loads(letter.body)
    assert original["channel"] == LONG
    assert original["data"] == {"event": {"replayId": 4}, "seq": 4}
    # Retried until a queue took it, yet one dead letter reached the queue.
    assert len(dead_letters.messages) == 1


async def test_a_message_nacked_max_nacks_times_is_dead_lettered(
    amqp_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    fake_bayeux: FakeBayeux,
    exchange_name: str,
    dead_letters: DeadLetters,
    tmp_path: Path,
) -> None:
    endpoint = replay_endpoint(
        fake_bayeux, exchange_name, dead_letter_exchange=dead_letters._exchange, max_nacks=2
    )
    # The endpoint's exchange routes to a queue that refuses every message: the broker nacks.
    channel = await amqp_connection.channel()
    exchange = await channel.declare_exchange(exchange_name, "topic", durable=True)
    refusing = await channel.declare_queue(
        unique_name("refusing"),
        exclusive=True,
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    await refusing.bind(exchange, "#")
    try:
        async with running_supervisor(amqp_url, tmp_path, {"ep": endpoint}) as sup:
            await endpoint_up(sup)
            await dead_letters.bind()
            fake_bayeux.publish(SHORT, {"event": {"replayId": 1}, "seq": 1})
            await dead_letters.wait_for(1)
            await eventually(lambda: position(sup, SHORT) == 1, 15, "the position moved over it")
            failures = "cometd_bridge_publish_failures_total"
            assert sample(sup, failures, reason="nack") == 2
            assert sample(sup, "cometd_bridge_dead_lettered_total", reason="nacked") == 1
    finally:
        await exchange.delete()

    letter = dead_letters.messages[0]
    assert letter.headers["cometd-dead-letter-reason"] == "nacked"
    assert letter.headers["cometd-channel"] == SHORT
    assert "max_nacks" in str(letter.headers["cometd-dead-letter-error"])
    # The body it would have had on its own exchange.
    assert json.loads(letter.body) == {"event": {"replayId": 1}, "seq": 1}


async def test_without_a_dead_letter_exchange_a_poison_event_is_skipped_as_before(
    amqp_url: str,
    fake_bayeux: FakeBayeux,
    exchange_name: str,
    collector: QueueCollector,
    tmp_path: Path,
) -> None:
    endpoint = replay_endpoint(fake_bayeux, exchange_name, dead_letter_exchange=None)
    async with running_supervisor(amqp_url, tmp_path, {"ep": endpoint}) as sup:
        await endpoint_up(sup)
        fake_bayeux.publish(LONG, {"event": {"replayId": 4}, "seq": 4})
        fake_bayeux.publish(SHORT, {"event": {"replayId": 1}, "seq": 1})
        await collector.wait_for(1, within=20)
        await eventually(lambda: position(sup, LONG) == 4, 15, "the position moved over it")
        assert malformed(sup, "unpublishable") == 1
        assert sample(sup, "cometd_bridge_dead_lettered_total", reason="unpublishable") == 0


async def test_a_message_the_client_refuses_as_too_deep_is_dead_lettered_as_received(
    amqp_url: str,
    fake_bayeux: FakeBayeux,
    exchange_name: str,
    collector: QueueCollector,
    dead_letters: DeadLetters,
    tmp_path: Path,
) -> None:
    head = json.dumps({"channel": SHORT, "id": "deep", "data": {"seq": -1}})[:-2]
    poison = head + ', "x": ' + nested_json(300) + "}}"
    fake_bayeux.on("/meta/connect", poison_first(poison))
    endpoint = {
        "url": fake_bayeux.url,
        "channels": [SHORT],
        "connection_types": "long-polling",
        "exchange": exchange_name,
        "dead_letter_exchange": dead_letters._exchange,
    }
    async with running_supervisor(amqp_url, tmp_path, {"ep": endpoint}) as sup:
        await endpoint_up(sup)
        await dead_letters.bind()
        for seq in range(1, 4):
            fake_bayeux.publish(SHORT, {"seq": seq})
        await collector.wait_for(3, within=20)
        await dead_letters.wait_for(1)
        assert malformed(sup, "too_deep") == 1
        await eventually(
            lambda: sample(sup, "cometd_bridge_dead_lettered_total", reason="too_deep") == 1,
            15,
            "the dead letter counted",
        )

    letter = dead_letters.messages[0]
    assert letter.headers["cometd-dead-letter-reason"] == "too_deep"
    assert letter.headers["cometd-channel"] == SHORT
    assert "nested deeper than" in str(letter.headers["cometd-dead-letter-error"])
    assert json.loads(letter.body) == json.loads(poison)


async def test_the_default_dead_letter_exchange_keeps_dead_letters_in_its_own_queue(
    amqp_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    fake_bayeux: FakeBayeux,
    exchange_name: str,
    collector: QueueCollector,
    tmp_path: Path,
) -> None:
    """With nothing configured, a dead letter lands in the queue ``cometd.dead-letter`` that
    the bridge declares: it is not retried forever against an exchange nobody bound."""
    name = "dl" + unique_name("x").split("-")[1]  # this run's endpoint, told apart in the queue
    head = json.dumps({"channel": SHORT, "id": "deep", "data": {"seq": -1}})[:-2]
    fake_bayeux.on("/meta/connect", poison_first(head + ', "x": ' + nested_json(300) + "}}"))
    endpoint = {
        "url": fake_bayeux.url,
        "channels": [SHORT],
        "connection_types": "long-polling",
        "exchange": exchange_name,
    }
    async with running_supervisor(amqp_url, tmp_path, {name: endpoint}) as sup:
        await endpoint_up(sup, name)
        fake_bayeux.publish(SHORT, {"seq": 1})
        await collector.wait_for(1, within=20)
        await eventually(
            lambda: (
                metric(sup, "cometd_bridge_dead_lettered_total", endpoint=name, reason="too_deep")
                == 1
            ),
            15,
            "the dead letter confirmed (routed to the default queue)",
        )
    channel = await amqp_connection.channel()
    queue = await channel.declare_queue("cometd.dead-letter", passive=True)
    ours, others = [], []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        if message.headers.get("cometd-endpoint") == name:
            ours.append(message)
            await message.ack()
        else:
            others.append(message)
    for message in others:  # another run's dead letters stay where they were
        await message.reject(requeue=True)
    assert [m.headers["cometd-dead-letter-reason"] for m in ours] == ["too_deep"]
