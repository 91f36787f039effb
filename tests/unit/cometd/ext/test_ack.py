"""AckExtension against scripted server payloads (the nodejs/Java server semantics), no sockets."""

from __future__ import annotations

from typing import Any

from bridge.cometd.ext import AckExtension, AckTag


def event(seq: int) -> dict[str, Any]:
    return {"channel": "/data", "data": {"seq": seq}}


def connect_reply(batch: int, *events: dict[str, Any]) -> list[dict[str, Any]]:
    # As cometd-nodejs-server writes it: queued messages first, then the reply.
    return [*events, {"channel": "/meta/connect", "successful": True, "ext": {"ack": batch}}]


async def open_session(ext: AckExtension) -> None:
    handshake: dict[str, Any] = {"channel": "/meta/handshake"}
    await ext.outgoing([handshake], {})
    assert handshake["ext"] == {"ack": True}
    await ext.incoming([{"channel": "/meta/handshake", "successful": True, "ext": {"ack": True}}])
    assert ext.supported is True


async def sent_ack(ext: AckExtension) -> int:
    message: dict[str, Any] = {"channel": "/meta/connect"}
    await ext.outgoing([message], {})
    ack: int = message["ext"]["ack"]
    return ack


async def test_acks_only_what_was_confirmed() -> None:
    ext = AckExtension()
    await open_session(ext)
    assert await sent_ack(ext) == 0

    first = connect_reply(1, event(1), event(2))
    await ext.incoming(first)
    m1, m2 = first[0], first[1]
    assert ext.ack_tag_of(m1) == AckTag(1, 1)
    assert await sent_ack(ext) == 0  # nothing confirmed: the server keeps batch 1

    ext.confirm(ext.ack_tag_of(m2))
    assert ext.acked == 0  # m1 is still unconfirmed
    ext.confirm(ext.ack_tag_of(m1))
    assert ext.acked == 1
    assert await sent_ack(ext) == 1
    assert ext.outstanding == 0


async def test_later_batch_waits_for_an_earlier_one() -> None:
    ext = AckExtension()
    await open_session(ext)
    b1 = connect_reply(1, event(1))
    await sent_ack(ext)
    await ext.incoming(b1)
    await sent_ack(ext)  # still 0: the server re-sends event 1 with batch 2
    b2 = connect_reply(2, event(1), event(2))
    await ext.incoming(b2)
    assert [m["data"]["seq"] for m in b2 if "data" in m] == [2]  # the re-send was removed
    assert ext.duplicates_dropped == 1
    ext.confirm(ext.ack_tag_of(b2[0]))
    assert ext.acked == 0
    ext.confirm(ext.ack_tag_of(b1[0]))
    assert ext.acked == 2


async def test_empty_batches_advance_the_ack() -> None:
    ext = AckExtension()
    await open_session(ext)
    await ext.incoming(connect_reply(1))
    assert ext.acked == 1
    await ext.incoming(connect_reply(2))
    assert await sent_ack(ext) == 2


async def test_resend_after_a_lost_reply_is_delivered() -> None:
    """The reply for batch 1 never arrived: its messages come with batch 2 and are new to us."""
    ext = AckExtension()
    await open_session(ext)
    await sent_ack(ext)
    b2 = connect_reply(2, event(1), event(2))
    await ext.incoming(b2)
    assert [m["data"]["seq"] for m in b2 if "data" in m] == [1, 2]
    assert ext.duplicates_dropped == 0
    for message in b2[:2]:
        ext.confirm(ext.ack_tag_of(message))
    assert ext.acked == 2


async def test_only_the_matching_prefix_is_dropped() -> None:
    ext = AckExtension()
    await open_session(ext)
    await sent_ack(ext)
    b1 = connect_reply(1, event(1), event(2))
    await ext.incoming(b1)
    await sent_ack(ext)
    # A server that does not re-send: the new messages must never be taken for repeats.
    b2 = connect_reply(2, event(3), event(1))
    await ext.incoming(b2)
    assert [m["data"]["seq"] for m in b2 if "data" in m] == [3, 1]
    assert ext.duplicates_dropped == 0


async def test_a_new_session_forgets_the_old_batches() -> None:
    ext = AckExtension()
    await open_session(ext)
    old = connect_reply(1, event(1))
    await ext.incoming(old)
    await open_session(ext)  # re-handshake: the server's queue is gone
    assert await sent_ack(ext) == 0
    new = connect_reply(1, event(2))
    await ext.incoming(new)
    ext.confirm(ext.ack_tag_of(old[0]))  # a confirm from the previous session changes nothing
    assert ext.acked == 0
    ext.confirm(ext.ack_tag_of(new[0]))
    assert ext.acked == 1


async def test_server_without_ack_is_left_alone() -> None:
    ext = AckExtension()
    await ext.outgoing([{"channel": "/meta/handshake"}], {})
    await ext.incoming([{"channel": "/meta/handshake", "successful": True}])
    assert ext.supported is False
    connect: dict[str, Any] = {"channel": "/meta/connect"}
    await ext.outgoing([connect], {})
    assert "ext" not in connect
    payload = [event(1), {"channel": "/meta/connect", "successful": True}]
    await ext.incoming(payload)
    assert ext.ack_tag_of(payload[0]) is None


async def test_handshake_batch_format() -> None:
    """New-format servers deliver messages in the handshake reply, in batch N."""
    ext = AckExtension()
    await ext.outgoing([{"channel": "/meta/handshake"}], {})
    payload = [
        {
            "channel": "/meta/handshake",
            "successful": True,
            "ext": {"ack": {"enabled": True, "batch": 4}},
        },
        event(1),
    ]
    await ext.incoming(payload)
    assert ext.supported is True
    assert ext.ack_tag_of(payload[1]) == AckTag(1, 4)
    ext.confirm(ext.ack_tag_of(payload[1]))
    assert ext.acked == 4
