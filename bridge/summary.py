"""Depth- and size-bounded text for logging server messages we refuse.

``repr`` of a message nested ~1,000 levels deep raises ``RecursionError`` (and a huge one
costs its full size before it is cut), so a skip log line built with it could itself fail and
take the rest of a batch with it. :func:`summarize` walks at most ``depth`` levels and stops
adding text once ``limit`` characters are written: its cost is bounded by the limit, whatever
the message.
"""

from __future__ import annotations

from typing import Any


__all__ = ["summarize"]

_ELLIPSIS = "…"


def summarize(value: Any, *, limit: int = 500, depth: int = 6) -> str:
    """A repr-like summary of ``value`` of at most about ``limit`` characters; containers
    deeper than ``depth`` show as ``[…]`` / ``{…}``."""
    out: list[str] = []
    budget = [limit]
    _walk(value, depth, out, budget)
    text = "".join(out)
    return text if len(text) <= limit else text[:limit] + _ELLIPSIS


def _emit(text: str, out: list[str], budget: list[int]) -> bool:
    """Append ``text`` (cut to the budget); False once the budget is spent."""
    if budget[0] <= 0:
        return False
    out.append(text[: budget[0] + 1])
    budget[0] -= len(text)
    return budget[0] > 0


def _walk(value: Any, depth: int, out: list[str], budget: list[int]) -> bool:
    if isinstance(value, dict):
        if depth <= 0:
            return _emit("{…}", out, budget)
        if not _emit("{", out, budget):
            return False
        for i, (key, item) in enumerate(value.items()):
            if i and not _emit(", ", out, budget):
                return False
            if not _walk(key, 0, out, budget) or not _emit(": ", out, budget):
                return False
            if not _walk(item, depth - 1, out, budget):
                return False
        return _emit("}", out, budget)
    if isinstance(value, list | tuple):
        if depth <= 0:
            return _emit("[…]", out, budget)
        if not _emit("[", out, budget):
            return False
        for i, item in enumerate(value):
            if i and not _emit(", ", out, budget):
                return False
            if not _walk(item, depth - 1, out, budget):
                return False
        return _emit("]", out, budget)
    if isinstance(value, str):
        # Only the part that can show is quoted: a 10 MB string costs no more than a short one.
        return _emit(repr(value[: max(0, budget[0])]), out, budget)
    if value is None or isinstance(value, bool | int | float):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
            return _emit(f"<int of {value.bit_length()} bits>", out, budget)
        return _emit(repr(value), out, budget)
    return _emit(f"<{type(value).__name__}>", out, budget)
