"""Logging: JSON or console, stdlib records routed through structlog, secrets never printed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from bridge.logging import configure_logging, redact_text


SECRET = "s3cr3t-tok-9f8e7d"


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access_level = logging.getLogger("aiohttp.access").level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(access_level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@pytest.mark.usefixtures("restore_logging")
def test_json_when_not_a_tty_with_context_and_redaction() -> None:
    out = io.StringIO()
    configure_logging("INFO", "auto", stream=out)
    structlog.contextvars.bind_contextvars(endpoint="orders")
    log = structlog.get_logger("bridge.test")
    log.info(
        "handshake_ok",
        access_token=SECRET,
        ext={"auth": {"Token": SECRET}, "replay": {"/a": 1}},
        headers=[{"Authorization": f"Bearer {SECRET}"}],
        url=f"https://user:{SECRET}@example.com/cometd",
        note=f"got Authorization: Bearer {SECRET} back",
    )
    text = out.getvalue()
    assert SECRET not in text
    (line,) = json_lines(out)
    assert line["event"] == "handshake_ok"
    assert line["endpoint"] == "orders"
    assert line["level"] == "info"
    assert line["logger"] == "bridge.test"
    assert line["access_token"] == "***"
    assert line["ext"] == {"auth": {"Token": "***"}, "replay": {"/a": 1}}
    assert line["url"] == "https://user:***@example.com/cometd"
    assert line["note"] == "got Authorization: Bearer *** back"
    assert "timestamp" in line


@pytest.mark.usefixtures("restore_logging")
def test_stdlib_records_are_routed_and_redacted() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    structlog.contextvars.bind_contextvars(endpoint="sf")
    logging.getLogger("aio_pika.robust_connection").warning(
        "Connection to %s lost", f"amqp://bridge:{SECRET}@rabbit:5672/"
    )
    (line,) = json_lines(out)
    assert line["event"] == "Connection to amqp://bridge:***@rabbit:5672/ lost"
    assert line["logger"] == "aio_pika.robust_connection"
    assert line["level"] == "warning"
    assert line["endpoint"] == "sf"


@pytest.mark.usefixtures("restore_logging")
def test_exceptions_are_redacted_in_json() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    try:
        raise ConnectionError(f"cannot reach amqp://guest:{SECRET}@host/")
    except ConnectionError:
        structlog.get_logger("bridge").exception("amqp_failed")
    assert SECRET not in out.getvalue()
    (line,) = json_lines(out)
    assert "ConnectionError" in line["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_console_on_a_tty_is_redacted_too() -> None:
    out = _TTY()
    configure_logging("DEBUG", "auto", stream=out)
    log = structlog.get_logger("bridge")
    log.debug("token_refreshed", refresh_token=SECRET, client_secret=SECRET)
    try:
        raise ValueError(f"https://u:{SECRET}@login.example.com")
    except ValueError:
        log.exception("boom")
    text = out.getvalue()
    assert "token_refreshed" in text
    assert "ValueError" in text
    assert SECRET not in text
    assert not text.lstrip().startswith("{")


@pytest.mark.usefixtures("restore_logging")
def test_level_filtering_and_quiet_access_log() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    structlog.get_logger("bridge").info("hidden")
    logging.getLogger("aiohttp.access").info("GET /metrics 200")
    structlog.get_logger("bridge").warning("shown")
    assert [line["event"] for line in json_lines(out)] == ["shown"]
    assert logging.getLogger("aiohttp.access").level == logging.WARNING


@pytest.mark.usefixtures("restore_logging")
def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", stream=first)
    configure_logging("INFO", "json", stream=second)
    logging.getLogger("x").warning("once")
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["once"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amqps://u:p@h:5671/v", "amqps://u:***@h:5671/v"),
        ("http://:p@h/", "http://:***@h/"),
        ("http://h/path?a=b", "http://h/path?a=b"),
        ("no url here", "no url here"),
        ("bearer abc.def-ghi=", "bearer ***"),
        # A password may contain "@": everything up to the last one before the host is hidden.
        ("amqp://u:p@ss@host/", "amqp://u:***@host/"),
        (
            "connecting to amqp://u:p@s@s@h:5672/vh failed",
            "connecting to amqp://u:***@h:5672/vh failed",
        ),
        # Secrets in query strings, whatever the spelling.
        ("https://h/c?access_token=abc&x=1", "https://h/c?access_token=***&x=1"),
        ("https://h/c?x=1&token=abc#f", "https://h/c?x=1&token=***#f"),
        ("https://h/c?sessionid=abc", "https://h/c?sessionid=***"),
        ("https://h/c?sessionId=abc;", "https://h/c?sessionId=***;"),
        (
            "https://h/t?client_secret=abc&clientSecret=def",
            "https://h/t?client_secret=***&clientSecret=***",
        ),
        ("https://h/t?password=abc", "https://h/t?password=***"),
        ("https://blob/x?sv=1&sig=abc%2Bdef", "https://blob/x?sv=1&sig=***"),
        ("https://h/?accessToken=abc", "https://h/?accessToken=***"),
        ("https://h/?x_api_key=abc", "https://h/?x_api_key=***"),
        (
            "grant_type=refresh_token&refresh_token=abc",
            "grant_type=refresh_token&refresh_token=***",
        ),
        ("https://h/c?page=2&sort=asc", "https://h/c?page=2&sort=asc"),
        # A JSON body echoed in an error message.
        ('reply {"accessToken": "abc", "n": "1"}', 'reply {"accessToken": "***", "n": "1"}'),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.usefixtures("restore_logging")
def test_camel_case_keys_headers_and_query_strings_in_log_fields() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    log = structlog.get_logger("bridge.test")
    log.info(
        "reply",
        accessToken=SECRET,
        body={"sessionId": SECRET, "refreshToken": SECRET, "clientSecret": SECRET, "n": 1},
        headers={"X-Custom": SECRET, "Accept": "application/json"},
        request={"headers": {"X-Signed": SECRET}, "url": f"https://h/c?access_token={SECRET}"},
        amqp=f"amqp://bridge:p@ss-{SECRET}@rabbit/",
    )
    text = out.getvalue()
    assert SECRET not in text
    assert "ss-" not in text
    (line,) = json_lines(out)
    assert line["accessToken"] == "***"
    assert line["body"] == {
        "sessionId": "***",
        "refreshToken": "***",
        "clientSecret": "***",
        "n": 1,
    }
    assert line["headers"] == {"X-Custom": "***", "Accept": "***"}
    assert line["request"]["url"] == "https://h/c?access_token=***"
    assert line["amqp"] == "amqp://bridge:***@rabbit/"


@pytest.mark.usefixtures("restore_logging")
def test_stdlib_messages_with_query_secrets_are_redacted() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    logging.getLogger("aiohttp.client").warning(
        "GET %s failed", f"https://cometd.example/cometd?sessionid={SECRET}&x=1"
    )
    assert SECRET not in out.getvalue()
    (line,) = json_lines(out)
    assert line["event"] == "GET https://cometd.example/cometd?sessionid=***&x=1 failed"
