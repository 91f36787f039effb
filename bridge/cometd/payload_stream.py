"""Incremental splitting of a Bayeux response body into its messages, sans I/O.

A response body is a JSON array of messages (or, from some servers, one bare object). The
transport feeds the bytes as they arrive (:meth:`PayloadStream.feed`) and takes whole
messages out (:meth:`PayloadStream.next`) only as fast as the client has room for them, so
what is held here is at most one read chunk plus one partial message: the rest of the response
stays in the socket, where TCP back-pressure keeps it at the server.

Each message is decoded whole by the client's ``json_loads``. Where a message ends is found
cheaply first: a ``}`` followed by ``,{`` or ``]`` is a candidate end, and a candidate is the
true end exactly when the bytes from the message's start up to it decode as one JSON value (a
candidate inside a string or a nested object leaves an unterminated string or unbalanced
braces). When the guess fails, an exact scanner (braces, brackets and strings, jumping over
string contents with ``bytes.find``) finds the end; it costs ~5x more per message, so it is the
fallback, not the rule. A message larger than ``max_message_size`` is skipped while it streams past,
never held whole: :meth:`next` returns an :class:`Oversize` for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple


__all__ = ["Oversize", "PayloadStream", "PayloadStreamError"]

# Outside strings inside a message, and between messages (where a comma ends a scalar item).
_INSIDE = re.compile(rb'[{}\[\]"]')
_BETWEEN = re.compile(rb'[{}\[\]",]')
_CANDIDATE = re.compile(rb"\}[ \t\r\n]*(?:,[ \t\r\n]*\{|\])")
_WHITESPACE = b" \t\r\n"
_QUOTE = 0x22
_BACKSLASH = 0x5C

# States.
_START = 0  # before the top-level value
_ITEMS = 1  # inside the top-level array, between items
_ITEM = 2  # inside an item
_END = 3  # after the top-level value
_OTHER = 4  # the body is something else: kept (up to the cap) to say what at the end


class Oversize(NamedTuple):
    """An item of ``size`` bytes over ``max_message_size``, skipped without being held."""

    size: int


class PayloadStreamError(ValueError):
    """The body is not a JSON array or object (the text says where it went wrong).

    ``reason`` is ``not_bayeux`` for a body that is JSON but not an array or object,
    ``invalid_json`` otherwise.
    """

    def __init__(self, text: str, reason: str = "invalid_json") -> None:
        super().__init__(text)
        self.reason = reason


class PayloadStream:
    """Splits one response body into its items, decoded, with their sizes in bytes."""

    __slots__ = (
        "_buf",
        "_cap",
        "_closed",
        "_depth",
        "_in_string",
        "_loads",
        "_pos",
        "_single",
        "_skipped",
        "_start",
        "_state",
    )

    def __init__(self, max_message_size: int, loads: Callable[[str], Any]) -> None:
        self._loads = loads
        self._buf = b""
        self._pos = 0  # scan position in _buf
        self._start = 0  # start of the current item in _buf
        self._state = _START
        self._depth = 0
        self._single = False  # the body is one bare object, not an array
        self._skipped = 0  # bytes of an oversize item already dropped
        self._cap = max_message_size
        self._in_string = False
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes held: the unread rest of the fed data (at most a chunk plus one item)."""
        return len(self._buf) - self._start

    @property
    def complete(self) -> bool:
        """The top-level value has ended."""
        return self._state == _END

    def feed(self, data: bytes) -> None:
        """Append the next bytes of the body."""
        if not data:
            return
        start = self._start
        if start:
            # Keep only the current item's bytes: consumed items are gone from memory.
            self._buf = self._buf[start:] + data
            self._pos -= start
            self._start = 0
        else:
            self._buf += data

    def close(self) -> None:
        """The body ended: raise PayloadStreamError if the top-level value is incomplete."""
        self._closed = True
        if self._state == _OTHER:
            body = self._buf[self._start :]
            try:
                self._loads(body.decode())
            except (ValueError, TypeError, RecursionError):
                raise PayloadStreamError(self._where("body is not JSON")) from None
            raise PayloadStreamError(
                self._where("body is not a JSON array or object"), "not_bayeux"
            )
        if self._state != _END:
            raise PayloadStreamError(self._where("body ended before the JSON value"))
        rest = self._buf[self._pos :].strip(_WHITESPACE)
        if rest:
            raise PayloadStreamError(self._where("data after the JSON value"))

    def next(self) -> tuple[Any, int] | Oversize | None:
        """The next item decoded and its size in bytes, an Oversize for a skipped one, or None
        until more is fed. Raises PayloadStreamError for an item that is not JSON."""
        buf = self._buf
        end = len(buf)
        pos = self._pos
        while pos < end:
            state = self._state
            if state == _ITEM:
                found = self._scan_item(buf, pos, end)
                if found < 0:
                    self._hold(end)
                    return None
                pos = found
                self._pos = pos
                item = buf[self._start : pos]
                skipped = self._skipped
                self._start = pos
                if not self._single:
                    self._state = _ITEMS
                else:
                    self._state = _END
                if skipped:
                    self._skipped = 0
                    return Oversize(skipped + len(item))
                if len(item) > self._cap:
                    return Oversize(len(item))
                return self._decode(item), len(item)
            byte = buf[pos]
            if byte in _WHITESPACE:
                pos += 1
                continue
            if state == _ITEMS:
                if byte == 0x2C:  # ","
                    pos += 1
                elif byte == 0x5D:  # "]"
                    self._state = _END
                    pos += 1
                    self._start = pos
                else:
                    if byte == 0x7B:  # "{": try the cheap guess of where it ends
                        guess = _CANDIDATE.search(buf, pos)
                        if guess is not None:
                            stop = guess.start() + 1
                            if stop - pos <= self._cap:
                                try:
                                    obj = self._loads(buf[pos:stop].decode())
                                except ValueError:
                                    pass
                                else:
                                    self._pos = self._start = stop
                                    return obj, stop - pos
                    self._begin_item(pos)
                continue
            if state == _START:
                if byte == 0x5B:  # "["
                    self._state = _ITEMS
                    pos += 1
                elif byte == 0x7B:  # "{"
                    self._single = True
                    self._begin_item(pos)
                else:
                    self._state = _OTHER
                    self._start = pos
                continue
            if state == _OTHER:
                if end - self._start > self._cap:
                    raise PayloadStreamError(self._where("body is not a JSON array or object"))
                self._pos = end
                return None
            # _END: only whitespace may follow (checked by close()).
            self._pos = pos
            self._start = pos
            raise PayloadStreamError(self._where("data after the JSON value"))
        self._pos = pos
        if self._state != _ITEM:
            self._start = pos
        return None

    # -- internals ---------------------------------------------------------------------------

    def _decode(self, item: bytes) -> Any:
        try:
            return self._loads(item.decode())
        except (ValueError, TypeError, RecursionError) as exc:
            sample = item[:80]
            raise PayloadStreamError(f"item is not JSON: {exc} (at {sample!r})") from None

    def _begin_item(self, pos: int) -> None:
        self._state = _ITEM
        self._start = pos
        self._pos = pos
        self._depth = 0
        self._in_string = False

    def _scan_item(self, buf: bytes, pos: int, end: int) -> int:
        """The end of the current item (exclusive), or -1 (state saved) if not in buf yet."""
        depth = self._depth
        if self._in_string:
            pos = _string_end(buf, pos, end)
            if pos < 0:
                return -1
            self._in_string = False
        inside, between = _INSIDE.search, _BETWEEN.search
        while True:
            match = inside(buf, pos) if depth else between(buf, pos)
            if match is None:
                self._depth = depth
                self._pos = end
                return -1
            pos = match.end()
            token = buf[pos - 1]
            if token == _QUOTE:
                found = _string_end(buf, pos, end)
                if found < 0:
                    self._depth = depth
                    self._in_string = True
                    self._pos = end
                    return -1
                pos = found
                continue
            if token == 0x2C or (depth == 0 and token == 0x5D):  # a scalar item ends
                if depth == 0:
                    return _rstrip(buf, self._start, pos - 1)
                continue
            if token in (0x7B, 0x5B):  # "{" "["
                depth += 1
            else:  # "}" "]"
                depth -= 1
                if depth <= 0:
                    self._depth = 0
                    return pos

    def _hold(self, end: int) -> None:
        # An item over the cap is dropped as it streams past: only its size is kept.
        held = end - self._start
        if held > self._cap:
            buf = self._buf
            keep = end
            # A trailing run of backslashes decides whether the next quote is escaped.
            while keep > self._start and buf[keep - 1] == _BACKSLASH:
                keep -= 1
            self._skipped += keep - self._start
            self._buf = buf[keep:end]
            self._pos = end - keep
            self._start = 0
        return

    def _where(self, what: str) -> str:
        sample = self._buf[self._start : self._start + 80]
        return f"{what} (at {sample!r})"


def _string_end(buf: bytes, pos: int, end: int) -> int:
    """Index just past the closing quote of a string whose content starts at ``pos``."""
    find = buf.find
    while True:
        quote = find(b'"', pos, end)
        if quote < 0:
            # Resume just before a trailing backslash run: its parity decides the next quote.
            return -1
        back = quote - 1
        while back >= 0 and buf[back] == _BACKSLASH:
            back -= 1
        if (quote - 1 - back) % 2 == 0:
            return quote + 1
        pos = quote + 1


def _rstrip(buf: bytes, start: int, pos: int) -> int:
    while pos > start and buf[pos - 1] in _WHITESPACE:
        pos -= 1
    return pos
