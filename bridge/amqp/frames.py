"""Sans-I/O encoding of AMQP 0-9-1 ``basic.publish`` frame sets, cheaper than pamqp objects.

aio-pika spends most of its ~137 µs per publish building pamqp objects, marshalling them one
frame at a time and creating futures. The bridge publishes one fixed property set, so the
method frame is cached per (exchange, routing key) and the content header is packed with a
few ``struct`` calls. Output is byte-compatible with the spec (checked against pamqp's
decoder in the tests).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

from pamqp import encode as _pamqp_encode


__all__ = [
    "FrameEncoder",
    "PROPERTY_FLAGS",
    "SHORTSTR_SAFE_CHARS",
    "check_shortstr",
    "encode_headers",
]

_FRAME_END: Final = b"\xce"
_METHOD_HEAD: Final = struct.Struct(">BHI")  # frame type, channel, payload size
_BASIC_PUBLISH: Final = b"\x00\x3c\x00\x28\x00\x00"  # class 60, method 40, reserved ticket 0
# class 60, weight 0, body size, property flags
_HEADER_FIXED: Final = struct.Struct(">HHQH")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")

# content_type | headers | delivery_mode | message_id | timestamp (spec bit order 15..2)
PROPERTY_FLAGS: Final = 0x8000 | 0x2000 | 0x1000 | 0x0080 | 0x0040
_CONTENT_TYPE: Final = b"\x10application/json"
_PERSISTENT: Final = b"\x02"
_METHOD_CACHE_MAX: Final = 4096
_HEAD_CACHE_MAX: Final = 256
_STR_HEADS: dict[str, bytes] = {}  # header name -> its short string and the ``S`` type tag


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


#: A str of at most this many characters fits a short string whatever it holds (UTF-8 takes
#: at most 4 bytes a character): the per-message checks need not encode it.
SHORTSTR_SAFE_CHARS: Final = 255 // 4


def check_shortstr(what: str, value: object) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``value`` fits an AMQP short string (a str of
    at most 255 UTF-8 bytes): exchange names, routing keys, header names, message ids."""
    if not isinstance(value, str):
        raise TypeError(f"{what} is {type(value).__name__}, not str")
    size = len(value.encode(errors="surrogatepass"))
    if size > 255:
        raise ValueError(f"{what} is {size} bytes, over the AMQP limit of 255: {value[:40]!r}...")


def encode_headers(headers: Mapping[str, Any]) -> bytes:
    """A field table; string values (the common case) are packed inline, the rest by pamqp.

    The few header names the bridge uses are encoded once (name + ``S`` tag), so a string
    header costs one ``str.encode`` and one ``pack``.
    """
    parts: list[bytes] = []
    append = parts.append
    for key, value in headers.items():
        if type(value) is str:
            head = _STR_HEADS.get(key)
            if head is None:
                head = _shortstr(key) + b"S"
                if len(_STR_HEADS) < _HEAD_CACHE_MAX:  # arbitrary header names: stay bounded
                    _STR_HEADS[key] = head
            raw = value.encode()
            append(head)
            append(_U32.pack(len(raw)))
            append(raw)
        else:
            append(_shortstr(key))
            append(_pamqp_encode.encode_table_value(value))
    table = b"".join(parts)
    return _U32.pack(len(table)) + table


class FrameEncoder:
    """Encodes persistent, mandatory JSON publishes for one channel number and frame size.

    Split in parts so the caller can join a whole batch at once: ``properties`` (the content
    header payload, channel independent, encoded once per message), ``method`` (cached per
    exchange and routing key), ``head`` (a frame header) and ``body`` (the body frames).
    """

    __slots__ = ("_body_max", "_channel", "_methods")

    def __init__(self, channel: int, frame_max: int) -> None:
        self._channel = channel
        self._body_max = frame_max - 8  # frame header (7) + frame end (1)
        self._methods: dict[tuple[str, str], bytes] = {}

    @staticmethod
    def properties(body_size: int, headers: bytes, message_id: str, timestamp: float) -> bytes:
        """The content header payload: class, weight, body size, flags and the properties."""
        return b"".join(
            (
                _HEADER_FIXED.pack(60, 0, body_size, PROPERTY_FLAGS),
                _CONTENT_TYPE,
                headers,
                _PERSISTENT,
                _shortstr(message_id),
                _U64.pack(int(timestamp)),
            )
        )

    def method(self, exchange: str, routing_key: str) -> bytes:
        """The whole ``basic.publish`` method frame (mandatory, not immediate)."""
        key = (exchange, routing_key)
        frame = self._methods.get(key)
        if frame is None:
            payload = _BASIC_PUBLISH + _shortstr(exchange) + _shortstr(routing_key) + b"\x01"
            frame = _METHOD_HEAD.pack(1, self._channel, len(payload)) + payload + _FRAME_END
            if len(self._methods) >= _METHOD_CACHE_MAX:  # unbounded routing keys: stay bounded
                self._methods.clear()
            self._methods[key] = frame
        return frame

    def header(self, props: bytes) -> bytes:
        """The content header frame around an encoded ``properties`` payload."""
        return _METHOD_HEAD.pack(2, self._channel, len(props)) + props + _FRAME_END

    def body(self, body: bytes, out: list[bytes]) -> None:
        """Append the body frames (split at the negotiated frame size) to ``out``."""
        step = self._body_max
        channel = self._channel
        for start in range(0, len(body), step):
            chunk = body[start : start + step]
            out.append(_METHOD_HEAD.pack(3, channel, len(chunk)))
            out.append(chunk)
            out.append(_FRAME_END)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, Any],
        message_id: str,
        timestamp: float,
    ) -> bytes:
        """All frames of one message (convenience for tests and one-off use)."""
        out = [
            self.method(exchange, routing_key),
            self.header(self.properties(len(body), encode_headers(headers), message_id, timestamp)),
        ]
        self.body(body, out)
        return b"".join(out)
