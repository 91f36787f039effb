"""The last few minutes of each endpoint's receive and publish rates, for the status page's
sparklines: a small ring of counter samples per endpoint, kept in memory only.

Fed from the supervisor's periodic gauge refresh; it keeps one sample per ``interval`` seconds
and at most ``window / interval`` rates, so its size never grows with traffic or uptime.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


__all__ = ["RateHistory", "RateSample"]


@dataclass(frozen=True, slots=True)
class RateSample:
    """Messages per second over the ``interval`` that ended at ``at`` (unix time)."""

    at: float
    received_per_second: float
    published_per_second: float


class RateHistory:
    """Per endpoint: rates between consecutive samples of its received/published totals."""

    def __init__(self, *, interval: float = 5.0, window: float = 300.0) -> None:
        if interval <= 0 or window < interval:
            raise ValueError("interval must be > 0 and window >= interval")
        self.interval = interval
        self._size = int(window // interval)
        self._last: dict[str, tuple[float, int, int]] = {}
        self._rates: dict[str, deque[RateSample]] = {}

    def sample(self, endpoint: str, now: float, received: int, published: int) -> bool:
        """Record the totals at ``now``; a call sooner than ``interval`` after the endpoint's
        last sample is ignored (returns False), so the caller may call it as often as it likes."""
        last = self._last.get(endpoint)
        if last is not None and now - last[0] < self.interval:
            return False
        self._last[endpoint] = (now, received, published)
        if last is None:
            self._rates[endpoint] = deque(maxlen=self._size)
            return True
        elapsed = now - last[0]
        # A total that went down (a worker rebuilt from zero) restarts the count: no negative rate.
        self._rates[endpoint].append(
            RateSample(
                at=now,
                received_per_second=max(0, received - last[1]) / elapsed,
                published_per_second=max(0, published - last[2]) / elapsed,
            )
        )
        return True

    def rates(self, endpoint: str) -> list[RateSample]:
        """Oldest first; empty until two samples were taken."""
        return list(self._rates.get(endpoint, ()))

    def as_status(self, endpoint: str) -> dict[str, object]:
        """The ``/status`` fields: the latest rates and the history behind the sparklines."""
        rates = self.rates(endpoint)
        latest = rates[-1] if rates else None
        return {
            "received_per_second": None if latest is None else round(latest.received_per_second, 2),
            "published_per_second": (
                None if latest is None else round(latest.published_per_second, 2)
            ),
            "rate_history": {
                "interval_seconds": self.interval,
                "received_per_second": [round(r.received_per_second, 2) for r in rates],
                "published_per_second": [round(r.published_per_second, 2) for r in rates],
            },
        }
