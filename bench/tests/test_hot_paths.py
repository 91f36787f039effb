"""The hot-path rewrites the profile led to produce exactly what the straightforward code did."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, strategies as st
from pamqp.decode import field_table

from bridge.amqp.frames import encode_headers
from bridge.routing import _canonical, _encode


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
