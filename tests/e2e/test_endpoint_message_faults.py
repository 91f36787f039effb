"""One bad server message never stops an endpoint: a routing key over AMQP's 255 bytes, a
message nested ~1,000 levels deep. Real RabbitMQ, the supervisor in-process, the scriptable
fake Bayeux server (it can put a hand-made body on the wire)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.demo.bayeux_server import Exchange
from bridge.demo.protocol import Message
from bridge.supervisor import Supervisor
from tests.e2e.harness import QueueCollector
from tests.e2e.inprocess import endpoint_up, eventually, metric, running_supervisor
from tests.fakes.fake_bayeux import Action, FakeBayeux, patch_reply


pytestmark = pytest.mark.integration

SHORT = "/event/Order__e"
# With a long constant prefix in the template, {channel_path} of LONG makes a routing key over
# AMQP's 255 bytes (SHORT's still fits); LONG's message id fits, so only the key is at fault.
PREFIX = "bridge." + "p" * 180
LONG = "/event/" + "L" * 80


def malformed(sup: Supervisor, reason: str) -> float:
    return metric(sup, "cometd_bridge_malformed_messages_total", endpoint="ep", reason=reason)


async def test_a_routing_key_over_255_bytes_is_counted_and_later_messages_are_published(
    amqp_url: str,
    fake_bayeux: FakeBayeux,
    exchange_name: str,
    collector: QueueCollector,
    tmp_path: Path,
) -> None:
    endpoint = {
        "url": fake_bayeux.url,
        "channels": [SHORT, LONG],
        "connection_types": "long-polling",
        "exchange": exchange_name,
        "dead_letter_exchange": None,  # skipped, as without dead-lettering (test_dead_letters)
        "routing_key": PREFIX + ".{channel_path}",
    }
    async with running_supervisor(amqp_url, tmp_path, {"ep": endpoint}) as sup:
        await endpoint_up(sup)
        fake_bayeux.publish(LONG, {"seq": 0})
        await eventually(lambda: malformed(sup, "unpublishable") == 1, 15, "long key counted")
        for seq in range(1, 6):
            fake_bayeux.publish(SHORT, {"seq": seq})
        await collector.wait_for(5, within=20)
        assert sorted(collector.seqs()) == [1, 2, 3, 4, 5]
        fake_bayeux.publish(LONG, {"seq": 6})
        fake_bayeux.publish(SHORT, {"seq": 7})
        await collector.wait_for(6, within=20)
        assert sorted(collector.seqs()) == [1, 2, 3, 4, 5, 7]
        assert malformed(sup, "unpublishable") == 2
        assert sup.workers["ep"].up


def nested_json(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def poison_first(text: str, after_events: int = 0) -> Action:
    """On the first connect reply that carries events, put a hand-made message after the
    first ``after_events`` of them (the fake's own encoder cannot write it: it is as deep as
    the recursion limit)."""
    state = {"done": False}

    async def after(exchange: Exchange, _message: Message) -> None:
        events = [r for r in exchange.replies if "data" in r]
        if state["done"] or not events:
            return
        state["done"] = True
        meta = [json.dumps(r) for r in exchange.replies if "data" not in r]
        before = [json.dumps(r) for r in events[:after_events]]
        rest = [json.dumps(r) for r in events[after_events:]]
        exchange.raw_body = ("[" + ",".join([*meta, *before, text, *rest]) + "]").encode()

    return Action(after=after, name="poison_first")


async def test_a_message_nested_1000_levels_is_skipped_and_the_rest_of_its_batch_published(
    amqp_url: str,
    fake_bayeux: FakeBayeux,
    exchange_name: str,
    collector: QueueCollector,
    tmp_path: Path,
) -> None:
    head = json.dumps({"channel": SHORT, "id": "deep", "data": {"seq": -1}})[:-2]
    poison = head + ', "x": ' + nested_json(1000) + "}}"
    endpoint = {
        "url": fake_bayeux.url,
        "channels": [SHORT],
        "connection_types": "long-polling",
        "exchange": exchange_name,
        "dead_letter_exchange": None,  # skipped, as without dead-lettering (test_dead_letters)
    }
    # Before the session starts: rules are matched when a request arrives, and the connect
    # that will carry the events is already held by the time the endpoint is up.
    fake_bayeux.on("/meta/connect", poison_first(poison))
    async with running_supervisor(amqp_url, tmp_path, {"ep": endpoint}) as sup:
        await endpoint_up(sup)
        for seq in range(1, 6):
            fake_bayeux.publish(SHORT, {"seq": seq})
        await collector.wait_for(5, within=20)
        assert sorted(collector.seqs()) == [1, 2, 3, 4, 5]
        skipped = sum(
            malformed(sup, r) for r in ("unroutable_message", "unpublishable", "too_deep")
        )
        assert skipped == 1
        assert sup.workers["ep"].status.restarts == 0, "the session did not end over it"


async def test_a_poison_event_on_a_replay_endpoint_is_skipped_and_the_position_moves_over_it(
    amqp_url: str,
    fake_bayeux: FakeBayeux,
    exchange_name: str,
    collector: QueueCollector,
    tmp_path: Path,
) -> None:
    head = json.dumps({"channel": SHORT, "data": {"event": {"replayId": 6}}})[:-2]
    poison = head + ', "payload": ' + nested_json(1000) + "}}"
    fake_bayeux.on("/meta/handshake", patch_reply(ext={"replay": True}))
    fake_bayeux.on("/meta/connect", poison_first(poison, after_events=5))
    endpoint = {
        "url": fake_bayeux.url,
        "channels": [SHORT],
        "connection_types": "long-polling",
        "exchange": exchange_name,
        "dead_letter_exchange": None,  # skipped, as without dead-lettering (test_dead_letters)
        "replay": "stored",
        "replay_fallback": "new",
    }

    def position(sup: Supervisor) -> Any:
        positions = sup.status()["endpoints"]["ep"].get("positions", {})
        return positions.get(SHORT, {}).get("replay_id")

    async with running_supervisor(amqp_url, tmp_path, {"ep": endpoint}) as sup:
        await endpoint_up(sup)
        assert sup.workers["ep"].replay_active
        for rid in [1, 2, 3, 4, 5, 7, 8, 9]:
            fake_bayeux.publish(SHORT, {"event": {"replayId": rid}, "seq": rid})
        await collector.wait_for(8, within=20)
        assert sorted(collector.seqs()) == [1, 2, 3, 4, 5, 7, 8, 9]
        await eventually(lambda: position(sup) == 9, 15, "the position moved over the poison")
        assert sup.workers["ep"].status.restarts == 0, "the session did not end over it"

    # The next start resumes after the poison event: it is not replayed first again.
    async with running_supervisor(amqp_url, tmp_path, {"ep": endpoint}) as sup:
        await endpoint_up(sup)
    subscribes = fake_bayeux.messages("/meta/subscribe")
    assert subscribes[-1]["ext"]["replay"] == {SHORT: 9}
