"""Server-side Bayeux rules without I/O: validating what a client sent, channel names and
wildcard matching, and the shape of replies and errors.

Error strings follow the Bayeux ``code:args:message`` form (``402::session_unknown``) so any
client can classify them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final


Message = dict[str, Any]

META_HANDSHAKE: Final = "/meta/handshake"
META_CONNECT: Final = "/meta/connect"
META_SUBSCRIBE: Final = "/meta/subscribe"
META_UNSUBSCRIBE: Final = "/meta/unsubscribe"
META_DISCONNECT: Final = "/meta/disconnect"

LONG_POLLING: Final = "long-polling"
WEBSOCKET: Final = "websocket"
CONNECTION_TYPES: Final = (WEBSOCKET, LONG_POLLING)

SESSION_UNKNOWN: Final = "402::session_unknown"

# A segment is anything but "/" and the wildcards; "*" and "**" only as the last segment.
_SEGMENT = r"[^/*]+"
_CHANNEL_RE: Final = re.compile(rf"^(/{_SEGMENT})+(/\*\*?)?$|^/\*\*?$")


class BadRequestError(ValueError):
    """The request body is not a Bayeux message array at all (answered with HTTP 400)."""


def decode_batch(body: bytes | str) -> list[Any]:
    """Decode a request body into a non-empty list of items (each still to be validated).

    A single JSON object is accepted as a one-message batch, as CometD servers do.
    """
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"body is not JSON: {exc}") from None
    if isinstance(decoded, dict):
        return [decoded]
    if not isinstance(decoded, list) or not decoded:
        raise BadRequestError("body must be a non-empty JSON array of Bayeux messages")
    return decoded


def check_message(item: Any) -> Message | None:
    """Return ``item`` if it is shaped like a Bayeux message, else ``None``."""
    if not isinstance(item, dict):
        return None
    channel = item.get("channel")
    if not isinstance(channel, str) or not channel.startswith("/"):
        return None
    message_id = item.get("id")
    if message_id is not None and not isinstance(message_id, str | int):
        return None
    client_id = item.get("clientId")
    if client_id is not None and not isinstance(client_id, str):
        return None
    return item


def is_valid_channel(name: str) -> bool:
    """Bayeux channel grammar: absolute, non-empty segments, trailing ``*``/``**`` only."""
    return bool(_CHANNEL_RE.match(name))


def is_wild(name: str) -> bool:
    return name.endswith("/*") or name.endswith("/**") or name in ("/*", "/**")


def is_meta(name: str) -> bool:
    return name == "/meta" or name.startswith("/meta/")


def is_service(name: str) -> bool:
    return name == "/service" or name.startswith("/service/")


def matches(pattern: str, channel: str) -> bool:
    """Whether subscription ``pattern`` (possibly wild) covers the concrete ``channel``."""
    if pattern == channel:
        return True
    if pattern.endswith("/**"):
        prefix = pattern[:-2]
        return channel.startswith(prefix) and len(channel) > len(prefix)
    if pattern.endswith("/*"):
        prefix = pattern[:-1]
        rest = channel[len(prefix) :]
        return channel.startswith(prefix) and rest != "" and "/" not in rest
    return False


def subscription_list(value: Any) -> list[str] | None:
    """The ``subscription`` field as a list of strings, or ``None`` if it is malformed."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        return None
    if not all(isinstance(item, str) for item in items):
        return None
    return list(items)


def reply_to(message: Message, **fields: Any) -> Message:
    """A reply echoing the request's ``id`` and ``channel`` (and any extra fields)."""
    reply: Message = {"channel": message["channel"]}
    if "id" in message:
        reply["id"] = message["id"]
    reply.update(fields)
    return reply


def error_reply(message: Message, error: str, **fields: Any) -> Message:
    return reply_to(message, successful=False, error=error, **fields)


def invalid_item_reply(item: Any) -> Message:
    """The reply to something in the batch that is not a Bayeux message."""
    reply: Message = {"channel": "/meta/unknown", "successful": False}
    if isinstance(item, dict):
        if isinstance(item.get("channel"), str):
            reply["channel"] = item["channel"]
        if isinstance(item.get("id"), str | int):
            reply["id"] = item["id"]
    reply["error"] = "400::invalid_message"
    return reply


def common_types(offered: Iterable[str], supported: Iterable[str]) -> list[str]:
    """Connection types both sides support, in the server's order."""
    client = set(offered)
    return [t for t in supported if t in client]
