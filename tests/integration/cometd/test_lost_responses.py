"""What a lost ``/meta/connect`` response costs, per server kind, and the client's defences
against messages it must not deliver (unsubscribed channels, too deep, extension failures).

A lost response is one the server counted as delivered (its events left the server's queue)
but the client could not read: cut mid-body, undecodable, an undecodable WebSocket frame.
The fake's ``lose_response`` action produces exactly that.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from bridge.cometd import Client, ClientError, ConnectionType, events
from bridge.cometd.ext.ack import AckExtension
from bridge.cometd.ext.replay import ReplayExtension
from bridge.cometd.extensions import Extension, Headers, Payload
from bridge.demo.bayeux_server import Exchange
from tests.fakes.fake_bayeux import Action, FakeBayeux, lose_response, patch_reply

from .conftest import WAIT, Recorder


pytestmark = pytest.mark.integration

CHANNEL = "/fake/stream"
TRANSPORTS = [ConnectionType.LONG_POLLING, ConnectionType.WEBSOCKET]
# A failing test must fail in seconds, not after the whole WAIT.
SHORT = 10.0


def make_client(
    fake: FakeBayeux, recorder: Recorder, transport: ConnectionType, **kw: Any
) -> Client:
    kw.setdefault("connection_timeout", 15.0)
    return Client(fake.url, transport, listener=recorder, **kw)


async def receive_ns(client: Client, count: int) -> list[int]:
    got: list[int] = []
    async with asyncio.timeout(WAIT):
        while len(got) < count:
            got.extend(m["data"]["n"] for m in await client.receive_many(count))
    return got


async def receive_after_loss(client: Client) -> list[int]:
    """Receive until event 4; return what came. Complete events that preceded the cut in the
    lost response (0, 1) may be delivered: they were read whole; what follows the cut is not."""
    got: list[int] = []
    async with asyncio.timeout(WAIT):
        while 4 not in got:
            got.extend(m["data"]["n"] for m in await client.receive_many(5))
    return got


def assert_recovered(got: list[int]) -> None:
    head, tail = got[:-3], got[-3:]
    assert tail == [2, 3, 4], f"events after the loss: {got}"
    assert head == [0, 1][: len(head)], f"before the cut only a prefix of [0, 1] may come: {got}"


async def lose_next_connect_with_events(
    fake: FakeBayeux, ns: range, loss: Action | None = None
) -> None:
    """The next /meta/connect carries the events ``ns``, and its response is lost."""
    held = fake.count("/meta/connect") + 1
    await fake.wait_for("/meta/connect", held)  # held until the fake's 1 s timeout

    async def publish(exchange: Exchange, message: dict[str, Any]) -> None:
        for n in ns:
            fake.publish(CHANNEL, {"n": n})

    loss = loss or lose_response()

    async def before(exchange: Exchange, message: dict[str, Any]) -> None:
        await publish(exchange, message)
        if loss.before is not None:
            await loss.before(exchange, message)

    fake.on("/meta/connect", Action(before=before, after=loss.after), nth=held + 1)


class SlowAfterDequeue(Action):
    """The server takes the events off its queue, then answers after the client gave up."""

    def __init__(self, seconds: float) -> None:
        async def after(exchange: Exchange, message: dict[str, Any]) -> None:
            await asyncio.sleep(seconds)  # the scripted slow server

        super().__init__(after=after, name="slow_after_dequeue")


LOSSES = {
    "cut_mid_body": lose_response(),
    "invalid_utf8": lose_response(b'[{"channel": "/meta/connect", "x": "\xff\xfe"}]'),
    "invalid_json": lose_response(b'[{"channel": '),
    "over_max_response_size": lose_response(b"[" + b" " * 70_000 + b"]"),
    "deadline_expired": SlowAfterDequeue(3.0),
}


# A WebSocket text frame cannot carry invalid UTF-8 (the socket fails: that is cut_mid_body).
LOSS_CASES = [
    (transport, loss)
    for loss in sorted(LOSSES)
    for transport in TRANSPORTS
    if not (loss == "invalid_utf8" and transport is ConnectionType.WEBSOCKET)
]


@pytest.mark.parametrize(("transport", "loss"), LOSS_CASES)
async def test_replay_session_rehandshakes_from_the_confirmed_position_after_a_lost_response(
    fake_bayeux: FakeBayeux, recorder: Recorder, transport: ConnectionType, loss: str
) -> None:
    fake_bayeux.on("/meta/handshake", patch_reply(ext={"replay": True}))
    confirmed = {CHANNEL: 41}
    replay = ReplayExtension(confirmed.get)
    client = make_client(
        fake_bayeux,
        recorder,
        transport,
        extensions=[replay],
        max_response_size=65_536,
        network_delay=1.0,  # the deadline of the held connect: fake timeout (1 s) + 1 s
    )
    async with client:
        await client.subscribe(CHANNEL)
        await lose_next_connect_with_events(fake_bayeux, range(2), LOSSES[loss])
        # A new session before any later event is accepted: its subscribe replays from the
        # confirmed position, so the lost events come back from the server.
        await recorder.wait_count(events.Handshaken, 2, limit=SHORT)
        await recorder.wait_count(events.Connected, 2, limit=SHORT)
        subscribes = fake_bayeux.messages("/meta/subscribe")
        assert len(subscribes) == 2
        assert subscribes[-1]["ext"]["replay"] == {CHANNEL: 41}
        assert not recorder.of(events.PossibleGap)  # replay recovers it: no gap to count
        for n in range(2, 5):
            fake_bayeux.publish(CHANNEL, {"n": n})
        assert_recovered(await receive_after_loss(client))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_lost_response_without_replay_or_ack_is_reported_as_a_possible_gap(
    fake_bayeux: FakeBayeux, recorder: Recorder, transport: ConnectionType
) -> None:
    async with make_client(fake_bayeux, recorder, transport) as client:
        await client.subscribe(CHANNEL)
        await lose_next_connect_with_events(fake_bayeux, range(2))
        await recorder.wait_count(events.PossibleGap, 1, limit=SHORT)
        assert [e.reason for e in recorder.of(events.PossibleGap)] == ["response_lost"]
        for n in range(2, 5):
            fake_bayeux.publish(CHANNEL, {"n": n})
        assert_recovered(await receive_after_loss(client))
        assert recorder.count(events.Handshaken) == 1  # the session itself goes on


def ack_server(fake: FakeBayeux) -> None:
    """The ack extension's wire format on the fake: each connect reply closes a new batch
    (the fake does not re-send; enough for what the client sends and counts)."""
    batches = iter(range(1, 1_000_000))

    async def batch(exchange: Exchange, message: dict[str, Any]) -> None:
        for reply in exchange.replies:
            if reply.get("channel") == "/meta/connect":
                reply["ext"] = {"ack": next(batches)}

    fake.on("/meta/handshake", patch_reply(ext={"ack": True}))
    fake.on("/meta/connect", Action(after=batch))


async def test_no_disconnect_while_an_ack_is_held(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    ack_server(fake_bayeux)
    ack = AckExtension()
    client = make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING, extensions=[ack])
    async with client:
        await client.subscribe(CHANNEL)
        fake_bayeux.publish(CHANNEL, {"n": 0})
        async with asyncio.timeout(WAIT):
            held = await client.receive()  # never confirmed: the ack stays held
    assert ack.outstanding == 1
    assert fake_bayeux.count("/meta/disconnect") == 0
    assert not recorder.of(events.PossibleGap)  # everything the server kept, we have
    # Once confirmed, the next session ends politely.
    async with client:
        await client.subscribe(CHANNEL)
        fake_bayeux.publish(CHANNEL, {"n": 1})
        async with asyncio.timeout(WAIT):
            ack.confirm(ack.ack_tag_of(await client.receive()))
    ack.confirm(ack.ack_tag_of(held))  # an earlier session's tag: ignored
    assert fake_bayeux.count("/meta/disconnect") == 1


async def test_ack_session_ending_after_a_lost_response_is_a_possible_gap(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    ack_server(fake_bayeux)
    ack = AckExtension()
    client = make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING, extensions=[ack])
    async with client:
        await client.subscribe(CHANNEL)
        # Every reply from now on is lost (e.g. the re-sent backlog exceeds the size cap).
        await fake_bayeux.wait_for("/meta/connect", fake_bayeux.count("/meta/connect") + 1)
        fake_bayeux.on(
            "/meta/connect",
            lose_response(),
            nth=fake_bayeux.count("/meta/connect"),
            times=10_000,
        )
        fake_bayeux.publish(CHANNEL, {"n": 0})
        await recorder.wait(
            lambda: any(e.reason == "malformed" for e in recorder.of(events.Reconnecting)),
            limit=SHORT,
        )
        assert not recorder.of(events.PossibleGap)  # the server re-sends: not yet a gap
    assert [e.reason for e in recorder.of(events.PossibleGap)] == ["ack_held"]
    assert fake_bayeux.count("/meta/disconnect") == 0


class Exploding(Extension):
    """An extension with a bug on data messages."""

    async def outgoing(self, payload: Payload, headers: Headers) -> None:
        return None

    async def incoming(self, payload: Payload, headers: Any = None) -> None:
        if any("data" in m for m in payload):
            raise RuntimeError("extension bug")


async def test_an_extension_failing_on_a_payload_neither_kills_the_client_nor_drops_it(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    client = make_client(
        fake_bayeux, recorder, ConnectionType.LONG_POLLING, extensions=[Exploding()]
    )
    async with client:
        await client.subscribe(CHANNEL)
        for n in range(3):
            fake_bayeux.publish(CHANNEL, {"n": n})
        try:
            assert await receive_ns(client, 3) == [0, 1, 2]
        except ClientError as exc:  # the old behaviour: the client task died
            pytest.fail(f"the client task died: {exc}")


async def test_events_on_unsubscribed_channels_are_dropped_and_reported(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    stray = [
        {"channel": "/other/x", "data": {"n": -1}},
        {"channel": "/fake/deeper/x", "data": {"n": -2}},  # not covered by /fake/*
    ]

    async def after(exchange: Exchange, message: dict[str, Any]) -> None:
        exchange.replies.extend(stray)

    fake_bayeux.on("/meta/connect", Action(after=after), nth=3)
    async with make_client(fake_bayeux, recorder, ConnectionType.LONG_POLLING) as client:
        await client.subscribe("/fake/*")
        await fake_bayeux.wait_for("/meta/connect", 3)
        fake_bayeux.publish(CHANNEL, {"n": 0})
        assert await receive_ns(client, 1) == [0]
        skipped = recorder.of(events.MessageSkipped)
        assert [e.reason for e in skipped] == ["unsubscribed_channel"] * 2
        assert client.pending_count == 0


async def test_a_message_nested_too_deep_is_skipped_and_the_rest_of_its_batch_delivered(
    fake_bayeux: FakeBayeux, recorder: Recorder
) -> None:
    deep = '{"channel": "/fake/stream", "data": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}"

    async def after(exchange: Exchange, message: dict[str, Any]) -> None:
        events_ = [json.dumps({"channel": CHANNEL, "data": {"n": n}}) for n in (0, 1)]
        body = json.dumps(exchange.replies)[:-1] + f", {events_[0]}, {deep}, {events_[1]}]"
        exchange.raw_body = body.encode()

    fake_bayeux.on("/meta/connect", Action(after=after), nth=3)
    client = make_client(
        fake_bayeux,
        recorder,
        ConnectionType.LONG_POLLING,
        json_loads=orjson.loads,  # as the daemon decodes: it accepts ~1,000 levels
    )
    async with client:
        await client.subscribe(CHANNEL)
        assert await receive_ns(client, 2) == [0, 1]
        assert [e.reason for e in recorder.of(events.MessageSkipped)] == ["too_deep"]
