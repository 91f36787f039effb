"""Response decoding with size caps and typed errors (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, strategies as st

from bridge.cometd.exceptions import MalformedResponseError
from bridge.cometd.transports.base import TransportConfig, TransportHooks, decode_payload


class Sink:
    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def hooks(self) -> TransportHooks:
        async def nothing(*args: Any) -> None:
            return None

        return TransportHooks(nothing, nothing, lambda messages, size: None, self.on_skipped)

    def on_skipped(self, reason: str, detail: str, _item: object = None) -> None:
        self.skipped.append((reason, detail))


def config(max_message_size: int = 1000) -> TransportConfig:
    return TransportConfig(
        url="http://127.0.0.1:1/cometd",
        session=None,  # type: ignore[arg-type]  # decoding never touches the session
        json_dumps=json.dumps,
        json_loads=json.loads,
        max_message_size=max_message_size,
        max_response_size=10_000,
    )


def test_oversize_messages_are_skipped_and_the_rest_kept() -> None:
    sink = Sink()
    body = json.dumps(
        [{"channel": "/a", "data": 1}, {"channel": "/a", "data": "x" * 2000}, {"channel": "/b"}]
    )
    messages = decode_payload(body, config(), sink.hooks())
    assert [m["channel"] for m in messages] == ["/a", "/b"]
    assert [reason for reason, _ in sink.skipped] == ["oversize"]


@pytest.mark.parametrize("body", ["not json", "{", "", "[1, 2", "\ud800"])
def test_invalid_json_is_a_typed_error(body: str) -> None:
    sink = Sink()
    with pytest.raises(MalformedResponseError):
        decode_payload(body, config(), sink.hooks())
    assert sink.skipped[0][0] == "invalid_json"


@pytest.mark.parametrize("body", ['"text"', "42", "null", "true"])
def test_json_that_is_not_bayeux_is_a_typed_error(body: str) -> None:
    sink = Sink()
    with pytest.raises(MalformedResponseError):
        decode_payload(body, config(), sink.hooks())
    assert sink.skipped[0][0] == "not_bayeux"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(st.one_of(_json, st.lists(st.fixed_dictionaries({"channel": st.text(max_size=5)}))))
def test_any_json_gives_messages_or_a_typed_error(obj: object) -> None:
    sink = Sink()
    try:
        messages = decode_payload(json.dumps(obj), config(max_message_size=20), sink.hooks())
    except MalformedResponseError:
        return
    assert all(isinstance(m["channel"], str) for m in messages)
    assert all(len(json.dumps(m)) <= 20 for m in messages)
