"""Logging: structlog for our code, stdlib records (aiohttp, aio-pika) through the same chain.

JSON lines when stdout is not a TTY (containers) or ``fmt="json"``; a console renderer
otherwise. Every record, ours or a library's, passes :func:`redact`, so tokens, passwords and
URL credentials never reach the output. Bind ``endpoint`` with
``structlog.contextvars.bind_contextvars(endpoint=name)`` at the top of an endpoint's task.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, ExcInfo, Processor, WrappedLogger


__all__ = ["configure_logging", "redact", "redact_data", "redact_text", "SENSITIVE_KEYS"]

MASK: Final = "***"

SENSITIVE_KEYS: Final = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "client_assertion",
        "assertion",
        "password",
        "passwd",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "token",
        "secret",
        "private_key",
        "api_key",
        "x_api_key",
        "session_id",
        "sid",
        "sig",
        "signature",
        "code_verifier",
    }
)
# Keys compared without separators or case: accessToken, access-token, ACCESS_TOKEN, sessionId
# and sessionid all name the same secret.
_COMPACT_KEYS: Final = frozenset(k.replace("_", "") for k in SENSITIVE_KEYS)
#: Keys whose mapping holds HTTP headers: every value is hidden (API keys hide under any name).
HEADER_KEYS: Final = frozenset({"headers"})

# scheme://user:password@host -> scheme://user:***@host (the user name is not a secret). The
# password runs to the last "@" before the path: passwords may contain "@" (amqp://u:p@ss@h/).
# A scheme starts a word and is short: otherwise every letter of a long word before "://"
# would start a new attempt (quadratic: 20 s for a 40 KB line).
_URL_CREDENTIALS = re.compile(
    r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s/:@]*:)[^\s/]*@"
)
# "Bearer <token>" in free text (an Authorization header echoed in an error message).
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*")
# name=value in a query string, a form body, a cookie or free text (?access_token=, &sig=).
_PARAMETER = re.compile(r"(?<![A-Za-z0-9_.\-])([A-Za-z0-9_.\-]+)=([^&;#\s\"'<>]*)")
# "name": "value" of a JSON document echoed inside a message (a server's error body).
_JSON_MEMBER = re.compile(r'"([A-Za-z0-9_.\-]+)"(\s*:\s*)"((?:[^"\\]|\\.)*)"')

# Libraries whose stdlib logs we route; their own levels stay as they are except these.
_QUIET: Final = {"aiohttp.access": logging.WARNING}


def _mask_parameter(match: re.Match[str]) -> str:
    if not _is_sensitive(match.group(1)) or not match.group(2):
        return match.group(0)
    return f"{match.group(1)}={MASK}"


def _mask_json_member(match: re.Match[str]) -> str:
    if not _is_sensitive(match.group(1)):
        return match.group(0)
    return f'"{match.group(1)}"{match.group(2)}"{MASK}"'


def redact_text(text: str) -> str:
    """Mask URL passwords, bearer tokens and secret ``name=value`` / ``"name": "value"`` pairs
    (query strings, form bodies, echoed JSON) inside a free-text string."""
    if "://" in text:
        text = _URL_CREDENTIALS.sub(rf"\1{MASK}@", text)
    if "earer" in text:
        text = _BEARER.sub(rf"\1{MASK}", text)
    if "=" in text:
        text = _PARAMETER.sub(_mask_parameter, text)
    if '"' in text:
        text = _JSON_MEMBER.sub(_mask_json_member, text)
    return text


def _is_sensitive(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    return key.lower().replace("-", "").replace("_", "").replace(".", "") in _COMPACT_KEYS


def redact_data(value: Any, key: Any = None) -> Any:
    """A copy of ``value`` with sensitive keys masked at any depth, every header value masked,
    and URL/bearer/query-string credentials masked in strings (for log fields, ``/status`` and
    anything else shown to people). ``key`` is the name ``value`` was found under."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        if isinstance(key, str) and key.lower() in HEADER_KEYS:
            return dict.fromkeys(value, MASK)
        return {k: MASK if _is_sensitive(k) else redact_data(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_data(v) for v in value]
    # SecretStr and friends render masked by their own repr; other objects are left as they are.
    return value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask sensitive keys anywhere nested, and credentials in strings."""
    for key, value in event_dict.items():
        if _is_sensitive(key):
            event_dict[key] = MASK
        elif isinstance(value, str | Mapping | list | tuple | set | frozenset):
            event_dict[key] = redact_data(value, key)
    return event_dict


class _BridgeHandler(logging.StreamHandler[TextIO]):
    """Our root handler, marked so a second configure_logging() replaces it."""


def _redacting_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
    # Console renderer: plain traceback, masked (exception messages may carry URLs).
    buf = io.StringIO()
    structlog.dev.plain_traceback(buf, exc_info)
    sio.write(redact_text(buf.getvalue()))


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger.

    ``fmt``: ``json``, ``console`` or ``auto`` (console on a TTY, JSON otherwise).
    ``stream`` defaults to ``sys.stdout``. Safe to call again (replaces the handler).
    """
    out = sys.stdout if stream is None else stream
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if fmt == "json":
        shared += [structlog.processors.format_exc_info, redact]
        renderer = structlog.processors.JSONRenderer()
    else:
        shared.append(redact)
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=_redacting_traceback)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _BridgeHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _BridgeHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, quiet_level in _QUIET.items():
        logging.getLogger(name).setLevel(quiet_level)
