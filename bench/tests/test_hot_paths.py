"""The hot-path rewrites the profile led to produce exactly what the straightforward code did."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, strategies as st
from pamqp.decode import field_table

from bridge.amqp.frames import encode_headers
from bridge.routing import Router, _canonical, _encode, orjson_body_encoder


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_reused_json_encoders_match_the_stdlib(value: Any) -> None:
    assert _encode(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert _canonical(value) == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, sort_keys=True
    )


@given(st.dictionaries(st.text(max_size=40), st.text() | st.integers(0, 2**31), max_size=5))
def test_encoded_headers_decode_to_the_same_table(headers: dict[str, Any]) -> None:
    encoded = encode_headers(headers)
    _, decoded = field_table(encoded)
    assert decoded == headers


# NaN/Infinity are not JSON: orjson.loads (the client's decoder alongside this encoder) rejects
# them, so they never reach the router (see orjson_body_encoder).
finite_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(finite_json_values)
def test_orjson_bodies_carry_the_same_json(value: Any) -> None:
    encode = orjson_body_encoder()
    if encode is None:
        pytest.skip("orjson is not installed (optional)")
    body = encode({"v": value, "big": 2**70})  # beyond 64 bits: the stdlib fallback
    assert json.loads(body) == json.loads(_encode({"v": value, "big": 2**70}))


def test_router_uses_the_given_body_encoder() -> None:
    router = Router("ep", "ex", body_encoder=lambda data: b"<%d>" % data["n"])
    msg = router.route({"channel": "/a", "data": {"n": 7}}, 1.0)
    assert msg.body == b"<7>"
    # The content-hash id does not depend on the body encoder.
    assert (
        msg.message_id == Router("ep", "ex").route({"channel": "/a", "data": {"n": 7}}).message_id
    )
