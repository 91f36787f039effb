"""The hand-rolled frame encoder against pamqp's decoder (no broker needed)."""

from __future__ import annotations

import pamqp.frame
import pytest
from hypothesis import given, strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from bridge.amqp.frames import FrameEncoder


def _decode(data: bytes) -> list[tuple[int, object]]:
    frames = []
    while data:
        consumed, channel, frame = pamqp.frame.unmarshal(data)
        frames.append((channel, frame))
        data = data[consumed:]
    return frames


header_values = st.one_of(
    st.text(max_size=50),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
)


@given(
    channel=st.integers(min_value=1, max_value=65535),
    exchange=st.text(max_size=40),
    routing_key=st.text(max_size=60),
    body=st.binary(max_size=3000),
    headers=st.dictionaries(st.text(min_size=1, max_size=20), header_values, max_size=6),
    message_id=st.text(min_size=1, max_size=60),
    timestamp=st.integers(min_value=0, max_value=0xFFFFFFFF),  # pamqp reads more as ms
)
def test_publish_frames_decode_to_what_was_encoded(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    headers: dict[str, object],
    message_id: str,
    timestamp: int,
) -> None:
    encoder = FrameEncoder(channel, frame_max=1024)  # small frames: bodies get split
    data = encoder.publish(exchange, routing_key, body, headers, message_id, float(timestamp))
    frames = _decode(data)
    assert {c for c, _ in frames} == {channel}
    method, header, *bodies = (f for _, f in frames)
    assert isinstance(method, spec.Basic.Publish)
    assert (method.exchange, method.routing_key) == (exchange, routing_key)
    assert method.mandatory is True
    assert method.immediate is False
    assert isinstance(header, ContentHeader)
    assert header.body_size == len(body)
    props = header.properties
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.message_id == message_id
    assert props.timestamp is not None
    assert int(props.timestamp.timestamp()) == timestamp
    assert (props.headers or {}) == headers
    assert all(isinstance(b, ContentBody) and len(b.value) <= 1024 - 8 for b in bodies)
    assert b"".join(b.value for b in bodies) == body  # type: ignore[attr-defined]


def test_overlong_short_strings_are_refused() -> None:
    encoder = FrameEncoder(1, frame_max=131072)
    with pytest.raises(ValueError, match="255"):
        encoder.method("x", "k" * 256)
    with pytest.raises(ValueError, match="255"):
        FrameEncoder.properties(0, b"\0\0\0\0", "é" * 128, 0)
