"""failure_text: the error plus Salesforce's failureReason, so quota and auth denials differ."""

from bridge.cometd.protocol import failure_text


def test_plain_error_is_kept() -> None:
    assert failure_text({"error": "402::session_unknown"}) == "402::session_unknown"


def test_failure_reason_is_appended() -> None:
    reply = {
        "error": "403::Handshake denied",
        "ext": {"sfdc": {"failureReason": "403::Organization concurrent user limit exceeded"}},
    }
    text = failure_text(reply)
    assert text is not None
    assert text.startswith("403::Handshake denied")
    assert "concurrent user limit exceeded" in text


def test_no_error_at_all() -> None:
    assert failure_text({}) is None
    assert failure_text({"ext": {"sfdc": {"failureReason": "401::x"}}}) == "401::x"
