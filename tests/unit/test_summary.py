"""Skip-log summaries of server messages are bounded in depth and size."""

from __future__ import annotations

from typing import Any

from hypothesis import given, strategies as st

from bridge.summary import summarize


def nested(levels: int) -> Any:
    value: Any = {"leaf": 1}
    for _ in range(levels):
        value = {"data": [value]}
    return value


def test_a_message_nested_far_beyond_the_recursion_limit_is_summarised() -> None:
    text = summarize({"channel": "/event/X", "data": nested(100_000)})
    assert text.startswith("{'channel': '/event/X', 'data': {'data': [{")
    assert "{…}" in text or "[…]" in text
    assert len(text) <= 501


def test_a_huge_message_is_cut_at_the_limit() -> None:
    text = summarize({"channel": "/a", "data": "x" * 10_000_000, "more": list(range(10**5))})
    assert len(text) <= 501
    assert text.endswith("…")


def test_small_messages_read_like_repr() -> None:
    message = {"channel": "/a", "data": {"n": [1, 2.5, None, True, "s"]}}
    assert summarize(message) == repr(message)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=40,
)


@given(json_values, st.integers(min_value=1, max_value=300))
def test_the_summary_never_exceeds_its_limit(value: Any, limit: int) -> None:
    assert len(summarize(value, limit=limit)) <= limit + 1
