"""CometD message -> AMQP message, per the contract in docs/CONTRACTS.md.

One :class:`Router` per endpoint. :meth:`Router.route` is on the hot path: the routing key
comes from a per-channel cache (the template is formatted once per channel), and the body is
encoded once. Publishing itself is the publisher's job; this module does no I/O.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final


if TYPE_CHECKING:
    from bridge.cometd.ext.ack import AckTag
    from bridge.settings import Endpoint

__all__ = [
    "Router",
    "RoutedMessage",
    "RoutingError",
    "CONTENT_TYPE",
    "DELIVERY_MODE_PERSISTENT",
    "dotted_channel",
    "fit_message_id",
    "message_id_for",
    "orjson_body_encoder",
    "replay_id_of",
]

CONTENT_TYPE: Final = "application/json"
DELIVERY_MODE_PERSISTENT: Final = 2

# Wildcard subscriptions can bring many distinct channels; keep the cache bounded.
_CACHE_LIMIT: Final = 4096
# AMQP's message-id is a short string: at most 255 UTF-8 bytes. A longer id (a long channel
# name or server ``id``) keeps its first bytes for operators and ends in ``~`` + the SHA-256 of
# the whole id, so it still names the same event every time and never collides in practice.
_MESSAGE_ID_MAX: Final = 255
_MESSAGE_ID_HASH: Final = 64  # hex digits of SHA-256


def _json_encoder(*, sort_keys: bool) -> Callable[[Any], str]:
    """A compact, non-ASCII-escaping JSON encoder, built once.

    ``JSONEncoder.encode`` builds a new C encoder on every call (a third of its cost for a
    small message); the one made here is reused. Without circular checking (data decoded from
    JSON cannot be circular; a circular input raises ``RecursionError``, mapped by the caller).
    """
    slow = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return slow.encode
    encoder = make(
        None, slow.default, json.encoder.encode_basestring, None, ":", ",", sort_keys, False, True
    )

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode


_encode = _json_encoder(sort_keys=False)
# Canonical form for the content hash: key order must not change the message id.
_canonical = _json_encoder(sort_keys=True)


class RoutingError(ValueError):
    """The message is not a routable CometD data message (no ``channel`` or no ``data``)."""


@dataclass(frozen=True, slots=True)
class RoutedMessage:
    """Everything the publisher needs for one AMQP message.

    Publish with ``content_type=CONTENT_TYPE``, ``delivery_mode=DELIVERY_MODE_PERSISTENT``
    and ``mandatory=True``.
    """

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str
    timestamp: float
    """Receive time, unix seconds."""
    channel: str
    replay_id: int | str | None
    ack_tag: AckTag | None = None
    """The source's acknowledgement correlation, handed back to it once the sink settled."""
    event_time: str | None = None
    """The event's own timestamp as the server wrote it (kept with the stored position)."""


def dotted_channel(channel: str) -> str:
    """``/event/Order__e`` -> ``event.Order__e`` (the leading slash dropped, others dotted)."""
    return channel[1:].replace("/", ".") if channel.startswith("/") else channel.replace("/", ".")


def replay_id_of(data: Any) -> int | str | None:
    """The replay id of a message's ``data`` (Salesforce: ``data.event.replayId``), or None."""
    if isinstance(data, dict):
        event = data.get("event")
        if isinstance(event, dict):
            rid = event.get("replayId")
            if isinstance(rid, int | str) and not isinstance(rid, bool):
                return rid
    return None


def message_id_for(
    endpoint: str, channel: str, data: Any, replay_id: int | str | None, cometd_id: Any
) -> str:
    """Stable id for the same event: replay id, else CometD id, else a content hash; at most
    255 UTF-8 bytes (a longer one is shortened by :func:`fit_message_id`)."""
    if replay_id is not None:
        return fit_message_id(f"{endpoint}:{channel}:r{replay_id}")
    if cometd_id is not None:
        return fit_message_id(f"{endpoint}:{channel}:i{cometd_id}")
    digest = hashlib.sha256(_canonical(data).encode()).hexdigest()[:32]
    return fit_message_id(f"{endpoint}:{channel}:h{digest}")


def fit_message_id(message_id: str) -> str:
    """``message_id`` itself when it fits AMQP's 255 bytes, else its first bytes + ``~`` +
    the SHA-256 (hex) of all of it: deterministic, so duplicates still share an id."""
    raw = message_id.encode(errors="surrogatepass")
    if len(raw) <= _MESSAGE_ID_MAX:
        return message_id
    keep = _MESSAGE_ID_MAX - 1 - _MESSAGE_ID_HASH
    prefix = raw[:keep].decode(errors="ignore")  # never split a character
    return f"{prefix}~{hashlib.sha256(raw).hexdigest()}"


def _stdlib_body(data: Any) -> bytes:
    return _encode(data).encode()


def orjson_body_encoder() -> Callable[[Any], bytes] | None:
    """orjson's body encoder when orjson is installed, else ``None``.

    Measured in bench/RESULTS.md: with the client decoding by ``orjson.loads`` too, the bridge
    spends ~12 % less CPU per message. Use the two together: orjson rejects NaN/Infinity on
    input, so none reaches this encoder (which would write them as ``null``). Values orjson
    cannot encode (integers beyond 64 bits) fall back to the stdlib. The content-hash message id
    always uses the stdlib's canonical form, so ids do not depend on orjson being installed.
    """
    try:  # imported by name: orjson is optional, and mypy must not need it either
        orjson = importlib.import_module("orjson")
    except ImportError:
        return None
    dumps: Callable[[Any], bytes] = orjson.dumps

    def encode(data: Any) -> bytes:
        try:
            return dumps(data)
        except TypeError:  # orjson.JSONEncodeError: e.g. an integer beyond 64 bits
            return _stdlib_body(data)

    return encode


class Router:
    """Routes one endpoint's CometD data messages to its exchange."""

    __slots__ = ("_body", "_cache", "_template", "endpoint", "exchange", "lease_epoch")

    def __init__(
        self,
        endpoint: str,
        exchange: str,
        routing_key: str = "{channel}",
        *,
        body_encoder: Callable[[Any], bytes] | None = None,
        lease_epoch: int | None = None,
    ) -> None:
        """``routing_key`` is a template with ``{endpoint}``, ``{channel}``, ``{channel_path}``
        (validated by the settings); ``body_encoder`` (default: the stdlib's compact JSON)
        turns ``data`` into the message body, e.g. :func:`orjson_body_encoder`.
        ``lease_epoch`` (``BRIDGE_COORDINATION=rabbitmq``: the epoch of the endpoint's lease
        this replica holds) goes on every message as ``cometd-lease-epoch``, so a consumer can
        fence off a deposed owner's late messages."""
        self.endpoint = endpoint
        self.lease_epoch = lease_epoch
        self.exchange = exchange
        self._template = routing_key
        self._cache: dict[str, str] = {}
        self._body = body_encoder or _stdlib_body

    @classmethod
    def from_settings(
        cls,
        name: str,
        endpoint: Endpoint,
        *,
        body_encoder: Callable[[Any], bytes] | None = None,
        lease_epoch: int | None = None,
    ) -> Router:
        """The router for the configured endpoint ``name``."""
        return cls(
            name,
            endpoint.exchange,
            endpoint.routing_key,
            body_encoder=body_encoder,
            lease_epoch=lease_epoch,
        )

    def routing_key(self, channel: str) -> str:
        """The routing key for ``channel`` (cached)."""
        key = self._cache.get(channel)
        if key is None:
            key = self._template.format(
                endpoint=self.endpoint, channel=dotted_channel(channel), channel_path=channel
            )
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[channel] = key
        return key

    def route(
        self,
        message: Mapping[str, Any],
        received_at: float | None = None,
        *,
        ack_tag: AckTag | None = None,
        event_time: str | None = None,
    ) -> RoutedMessage:
        """Build the AMQP message for a CometD data message received at ``received_at``
        (unix seconds; default now), carrying ``ack_tag`` and ``event_time`` to its settlement.
        Raises :class:`RoutingError` for a non-data message."""
        channel = message.get("channel")
        if not isinstance(channel, str) or "data" not in message:
            raise RoutingError("not a CometD data message (needs channel and data)")
        data = message["data"]
        try:
            body = self._body(data)
        except (TypeError, ValueError, RecursionError) as exc:
            raise RoutingError(f"data is not JSON-serialisable: {exc}") from None
        replay_id = replay_id_of(data)
        cometd_id = message.get("id")
        try:
            # Without a replay id or CometD id the id hashes the canonical JSON of ``data``,
            # which recurses like the body encoder does.
            message_id = message_id_for(self.endpoint, channel, data, replay_id, cometd_id)
        except (TypeError, ValueError, RecursionError) as exc:
            raise RoutingError(f"data is not JSON-serialisable: {exc}") from None
        headers: dict[str, Any] = {"cometd-endpoint": self.endpoint, "cometd-channel": channel}
        if cometd_id is not None:
            headers["cometd-id"] = str(cometd_id)
        if replay_id is not None:
            headers["replay-id"] = replay_id
        if self.lease_epoch is not None:
            headers["cometd-lease-epoch"] = self.lease_epoch
        return RoutedMessage(
            exchange=self.exchange,
            routing_key=self.routing_key(channel),
            body=body,
            headers=headers,
            message_id=message_id,
            timestamp=time.time() if received_at is None else received_at,
            channel=channel,
            replay_id=replay_id,
            ack_tag=ack_tag,
            event_time=event_time,
        )
