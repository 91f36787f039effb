"""The dead letter built for a message the bridge cannot publish (no I/O)."""

from __future__ import annotations

import json
from typing import Any

from bridge.pipeline.dead_letters import ERROR_MAX_CHARS, MAX_BODY_BYTES, dead_letter
from bridge.pipeline.sink import retries_until_routed


def build(**given: Any) -> Any:
    args: dict[str, Any] = {
        "exchange": "cometd.dead-letter",
        "endpoint": "orders",
        "reason": "unpublishable",
        "error": "ValueError: routing key is 300 bytes",
        "channel": "/event/Order__e",
        "replay_id": 7,
        "now": 1_700_000_000.0,
    }
    args.update(given)
    return dead_letter(**args)


def test_a_routed_body_is_kept_as_is_with_the_headers() -> None:
    letter = build(body=b'{"a":1}', message_id="orders:/event/Order__e:r7", ack_tag=("b", 3))
    assert letter.body == b'{"a":1}'
    assert letter.routing_key == "orders.unpublishable"
    assert letter.headers == {
        "cometd-endpoint": "orders",
        "cometd-channel": "/event/Order__e",
        "cometd-dead-letter-reason": "unpublishable",
        "cometd-dead-letter-error": "ValueError: routing key is 300 bytes",
    }
    assert (letter.channel, letter.replay_id, letter.ack_tag) == ("/event/Order__e", 7, ("b", 3))
    assert retries_until_routed(letter)


def test_a_bayeux_message_is_sent_as_json() -> None:
    message = {"channel": "/event/Order__e", "data": {"event": {"replayId": 7}, "ü": "x"}}
    letter = build(message=message)
    assert json.loads(letter.body) == message
    assert "cometd-dead-letter-truncated" not in letter.headers


def test_a_body_over_the_cap_is_cut_and_flagged() -> None:
    letter = build(body=b"x" * (MAX_BODY_BYTES + 10))
    assert len(letter.body) == MAX_BODY_BYTES
    assert letter.headers["cometd-dead-letter-truncated"] is True
    assert letter.headers["cometd-dead-letter-original-size"] == MAX_BODY_BYTES + 10


def test_a_message_json_cannot_encode_is_summarised_and_flagged() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    letter = build(message={"channel": "/event/Order__e", "data": deep})
    assert letter.body.startswith(b"{'channel': '/event/Order__e'")
    assert len(letter.body) <= MAX_BODY_BYTES
    assert letter.headers["cometd-dead-letter-truncated"] is True
    assert "cometd-dead-letter-original-size" not in letter.headers


def test_the_error_is_redacted_and_bounded() -> None:
    letter = build(error="failed: Authorization: Bearer s3cr3t-token " + "e" * 5000)
    error = letter.headers["cometd-dead-letter-error"]
    assert "s3cr3t-token" not in error
    assert len(error) <= ERROR_MAX_CHARS + 1


def test_a_channel_that_is_not_a_string_is_summarised() -> None:
    letter = build(channel={"x": ["y" * 5000]}, message={"channel": {"x": 1}})
    assert len(letter.headers["cometd-channel"]) <= 1001
    assert letter.channel is None


def test_the_message_id_is_stable_short_and_per_reason() -> None:
    one = build(body=b"{}", message_id="orders:/c:r1" + "x" * 300)
    again = build(body=b"{}", message_id="orders:/c:r1" + "x" * 300)
    nacked = build(body=b"{}", message_id="orders:/c:r1" + "x" * 300, reason="nacked")
    assert one.message_id == again.message_id != nacked.message_id
    assert len(one.message_id.encode()) <= 255
    by_body = build(message={"channel": "/c", "data": 1})
    other = build(message={"channel": "/c", "data": 2})
    assert by_body.message_id != other.message_id
