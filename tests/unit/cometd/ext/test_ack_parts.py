"""The ack extension on a response delivered in parts (the client's buffer had room for only
some of it): the queued messages come before the /meta/connect reply that names their batch."""

from __future__ import annotations

from typing import Any

from bridge.cometd.ext import AckExtension, AckTag


HTTP = {"content-type": "application/json"}  # a long-poll part carries its response headers


def event(seq: int) -> dict[str, Any]:
    return {"channel": "/data", "data": {"seq": seq}}


def reply(batch: int) -> dict[str, Any]:
    return {"channel": "/meta/connect", "successful": True, "ext": {"ack": batch}}


async def opened() -> AckExtension:
    ext = AckExtension()
    await ext.outgoing([{"channel": "/meta/handshake"}], {})
    await ext.incoming([{"channel": "/meta/handshake", "successful": True, "ext": {"ack": True}}])
    return ext


async def connect(ext: AckExtension) -> int:
    message: dict[str, Any] = {"channel": "/meta/connect"}
    await ext.outgoing([message], {})
    ack: int = message["ext"]["ack"]
    return ack


async def test_parts_before_the_reply_are_tagged_with_its_batch() -> None:
    ext = await opened()
    await connect(ext)
    first, second = [event(1), event(2)], [event(3)]
    await ext.incoming(first, HTTP)
    await ext.incoming(second, HTTP)
    last = [event(4), reply(7)]
    await ext.incoming(last, HTTP)
    tags = {AckExtension.ack_tag_of(m) for m in (*first, *second, last[0])}
    assert tags == {AckTag(1, 7)}
    for message in (*first, *second, last[0]):
        assert await connect(ext) == 0  # held until every message of the batch is confirmed
        ext.confirm(ext.ack_tag_of(message))
    assert await connect(ext) == 7


async def test_a_confirm_before_the_reply_counts() -> None:
    ext = await opened()
    await connect(ext)
    part = [event(1), event(2)]
    await ext.incoming(part, HTTP)
    ext.confirm(
        ext.ack_tag_of(part[0])
    )  # the broker confirmed it while the response was still streaming
    await ext.incoming([reply(3)], HTTP)
    assert await connect(ext) == 0
    ext.confirm(ext.ack_tag_of(part[1]))
    assert await connect(ext) == 3


async def test_resends_are_dropped_across_parts() -> None:
    ext = await opened()
    await connect(ext)
    await ext.incoming([event(1), event(2), reply(1)], HTTP)
    await connect(ext)  # ack still 0: the server re-sends 1 and 2 first
    part = [event(1)]
    await ext.incoming(part, HTTP)
    rest = [event(2), event(3), reply(2)]
    await ext.incoming(rest, HTTP)
    assert part == []
    assert [m["data"]["seq"] for m in rest if "data" in m] == [3]
    assert ext.duplicates_dropped == 2


async def test_shedding_the_rest_keeps_the_kept_part_unacknowledged_until_a_later_batch() -> None:
    ext = await opened()
    await connect(ext)
    kept = [event(1), event(2)]
    await ext.incoming(kept, HTTP)  # room for these
    ext.set_shedding(True)  # the buffer is full: the rest is shed as it is decoded
    shed = [event(3)]
    await ext.incoming(shed, HTTP)
    await ext.incoming([event(4), reply(5)], HTTP)
    ext.set_shedding(False)
    assert shed == []
    assert ext.messages_shed == 2
    for message in kept:
        ext.confirm(ext.ack_tag_of(message))
    # Batch 5 holds the shed messages on the server: not acknowledged.
    assert await connect(ext) == 0
    # The server re-sends the whole batch: the kept part is recognised, the shed part is new.
    again = [event(1), event(2), event(3), event(4), reply(6)]
    await ext.incoming(again, HTTP)
    assert [m["data"]["seq"] for m in again if "data" in m] == [3, 4]
    assert await connect(ext) == 0
    for message in again[:2]:
        ext.confirm(ext.ack_tag_of(message))
    assert await connect(ext) == 6


async def test_a_websocket_push_is_never_shed() -> None:
    ext = await opened()
    await connect(ext)
    ext.set_shedding(True)
    pushed = [event(1)]
    await ext.incoming(pushed, None)
    assert [m["data"] for m in pushed] == [{"seq": 1}]
    assert ext.messages_shed == 0
