"""AckExtension while shedding (the client's buffer is full and it polls only to keep the
session alive): the shedding rule against scripted cometd-nodejs-server payloads, no sockets.

Rule: only data messages never received before are removed, and their batch is never
acknowledged, so the server keeps them and sends them again; repeats are still dropped as
duplicates; meta replies always stay.
"""

from __future__ import annotations

from typing import Any

from bridge.cometd.ext import AckExtension
from bridge.cometd.extensions import Extension

from .test_ack import connect_reply, event, open_session, sent_ack


def seqs(payload: list[dict[str, Any]]) -> list[int]:
    return [m["data"]["seq"] for m in payload if "data" in m]


def channels(payload: list[dict[str, Any]]) -> list[str]:
    return [m["channel"] for m in payload]


async def shed(ext: AckExtension, payload: list[dict[str, Any]]) -> None:
    """Receive ``payload`` the way the client's keep-alive connect does."""
    ext.set_shedding(True)
    try:
        await ext.incoming(payload)
    finally:
        ext.set_shedding(False)


async def test_can_shed_only_when_the_server_acknowledges() -> None:
    ext = AckExtension()
    assert ext.can_shed() is False  # before the handshake
    await open_session(ext)
    assert ext.can_shed() is True
    refused = AckExtension()
    await refused.outgoing([{"channel": "/meta/handshake"}], {})
    await refused.incoming([{"channel": "/meta/handshake", "successful": True}])
    assert refused.can_shed() is False


async def test_base_extension_cannot_shed() -> None:
    class Plain(Extension):
        async def outgoing(self, payload: Any, headers: Any) -> None:
            pass

        async def incoming(self, payload: Any, headers: Any = None) -> None:
            pass

    plain = Plain()
    assert plain.can_shed() is False
    plain.set_shedding(True)  # a no-op, not an error


async def test_new_messages_are_shed_repeats_dropped_meta_kept() -> None:
    ext = AckExtension()
    await open_session(ext)
    await sent_ack(ext)
    first = connect_reply(1, event(1), event(2))
    await ext.incoming(first)
    held = first[:2]  # the client's buffer: unconfirmed, so the ack stays at 0
    assert await sent_ack(ext) == 0

    keepalive = connect_reply(2, event(1), event(2), event(3), event(4))
    await shed(ext, keepalive)
    assert channels(keepalive) == ["/meta/connect"]  # the reply itself stays
    assert ext.duplicates_dropped == 2
    assert ext.messages_shed == 2  # 3 and 4: new, unacknowledged

    # Confirming what the client held acknowledges batch 1 only, never the shed batch 2.
    for message in held:
        ext.confirm(ext.ack_tag_of(message))
    assert await sent_ack(ext) == 1

    # After the pause the server re-sends 3 and 4 (batch 2 was never acknowledged).
    resumed = connect_reply(3, event(3), event(4))
    await ext.incoming(resumed)
    assert seqs(resumed) == [3, 4]
    assert all(ext.ack_tag_of(m) is not None for m in resumed[:2])
    assert await sent_ack(ext) == 1  # held until 3 and 4 are confirmed
    for message in resumed[:2]:
        ext.confirm(ext.ack_tag_of(message))
    assert await sent_ack(ext) == 3


async def test_a_shed_batch_is_never_acknowledged_even_when_everything_held_is_confirmed() -> None:
    ext = AckExtension()
    await open_session(ext)
    await sent_ack(ext)
    keepalive = connect_reply(1, event(1))
    await shed(ext, keepalive)
    assert ext.messages_shed == 1
    assert ext.outstanding == 0
    assert await sent_ack(ext) == 0  # batch 1 holds a message nobody received

    # Shedding goes on: the server re-sends 1 with 2 in batch 2; both are new to us.
    again = connect_reply(2, event(1), event(2))
    await shed(ext, again)
    assert ext.messages_shed == 3
    assert await sent_ack(ext) == 0


async def test_a_keepalive_without_new_messages_sheds_nothing() -> None:
    ext = AckExtension()
    await open_session(ext)
    await sent_ack(ext)
    first = connect_reply(1, event(1))
    await ext.incoming(first)
    keepalive = connect_reply(2, event(1))
    await shed(ext, keepalive)
    assert ext.messages_shed == 0
    assert ext.duplicates_dropped == 1
    ext.confirm(ext.ack_tag_of(first[0]))
    # Batch 2 only re-sent what the client holds: acknowledging it after the confirm is safe.
    assert await sent_ack(ext) == 2


async def test_no_shedding_outside_a_keepalive() -> None:
    ext = AckExtension()
    await open_session(ext)
    payload = connect_reply(1, event(1), event(2))
    await ext.incoming(payload)
    assert seqs(payload) == [1, 2]
    assert ext.messages_shed == 0


async def test_messages_outside_an_acknowledged_batch_are_never_shed() -> None:
    """A payload without the connect reply's batch (e.g. a WebSocket push) is not the
    extension's to drop: the server does not keep it."""
    ext = AckExtension()
    await open_session(ext)
    pushed = [event(1)]
    await shed(ext, pushed)
    assert seqs(pushed) == [1]
    assert ext.messages_shed == 0
