"""The transports' Delivery (no sockets): what reaches the buffer, with which sizes, whatever
the extensions do to a payload in place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from bridge.cometd.transports.base import Delivery, TransportHooks


EVENT = {"channel": "/a", "data": {"n": 1}}
REPLY = {"channel": "/meta/connect", "successful": True, "id": "7"}


class Buffer:
    """Records what the Delivery hands on, as the client's buffer would take it."""

    def __init__(self, incoming: Callable[[list[dict[str, Any]]], None]) -> None:
        self.delivered: list[tuple[dict[str, Any], int]] = []
        self.skipped: list[str] = []
        self._incoming = incoming

    def hooks(self) -> TransportHooks:
        async def outgoing(*_: Any) -> None:
            return None

        async def incoming(payload: list[dict[str, Any]], _h: Mapping[str, str] | None) -> None:
            self._incoming(payload)

        def on_messages(messages: list[dict[str, Any]], sizes: list[int]) -> None:
            self.delivered.extend(zip(messages, sizes, strict=True))

        def on_skipped(reason: str, _detail: str, _item: object = None) -> None:
            self.skipped.append(reason)

        return TransportHooks(outgoing, incoming, on_messages, on_skipped)


def route_nothing(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m is not REPLY]


@pytest.mark.parametrize("shallow", [True, False])
async def test_an_extension_adding_a_message_to_a_one_message_frame(shallow: bool) -> None:
    added = {"channel": "/b", "data": {}}
    buffer = Buffer(lambda payload: payload.append(added))
    delivery = Delivery(buffer.hooks(), route_nothing, None)
    await delivery.add(dict(EVENT), 40, shallow=shallow)
    await delivery.flush()
    # The original keeps its size; what an extension made up has none of its own.
    assert [(m["channel"], size) for m, size in buffer.delivered] == [("/a", 40), ("/b", 0)]


async def test_an_extension_dropping_the_only_message() -> None:
    buffer = Buffer(lambda payload: payload.clear())
    delivery = Delivery(buffer.hooks(), route_nothing, None)
    assert delivery.offer(dict(EVENT), 40, shallow=True)
    await delivery.flush()
    assert buffer.delivered == []


async def test_sizes_follow_their_messages_when_a_reply_is_routed_away() -> None:
    buffer = Buffer(lambda payload: None)
    delivery = Delivery(buffer.hooks(), route_nothing, None)
    for message, size in ((dict(EVENT), 10), (REPLY, 20), ({**EVENT, "id": "x"}, 30)):
        assert delivery.offer(message, size, shallow=True)
    await delivery.flush()
    assert [size for _, size in buffer.delivered] == [10, 30]


async def test_a_message_nested_too_deep_is_skipped() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = {"a": deep}
    buffer = Buffer(lambda payload: None)
    delivery = Delivery(buffer.hooks(), route_nothing, None)
    await delivery.add({"channel": "/a", "data": deep}, 2000)
    await delivery.flush()
    assert buffer.delivered == []
    assert buffer.skipped == ["too_deep"]


async def test_an_event_decoded_as_a_dict_subclass_is_bounded_too() -> None:
    # A client's json_loads may build OrderedDicts: they are events like any dict, so a full
    # buffer refuses them instead of letting them past the bound.
    from collections import OrderedDict

    buffer = Buffer(lambda payload: None)
    hooks = buffer.hooks()
    hooks.admits = lambda count, size: False  # the buffer is full
    delivery = Delivery(hooks, route_nothing, None)
    assert not delivery.offer(OrderedDict(EVENT), 40, shallow=True)
    assert delivery.offer(OrderedDict(REPLY), 40, shallow=True)  # replies never wait
