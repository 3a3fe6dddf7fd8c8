"""Per-subject token buckets: a misbehaving client slows itself down, not its neighbours."""

from __future__ import annotations

import math
import time
from collections import OrderedDict


class RateLimiter:
    """A token bucket per subject: ``rate`` requests per second, bursts up to ``burst``.

    A rate of 0 disables limiting. Buckets of subjects idle long enough to be full again are
    forgotten (at most ``max_subjects`` are kept) so memory stays bounded.
    """

    def __init__(self, rate: float, burst: float, *, max_subjects: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0) if rate > 0 else 0.0
        self.max_subjects = max_subjects
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, subject: str, cost: float = 1.0, now: float | None = None) -> float:
        """0.0 when the request may go ahead, else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(subject, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
        self._buckets[subject] = (tokens, now)
        while len(self._buckets) > self.max_subjects:
            self._buckets.popitem(last=False)
        return wait


def retry_after(seconds: float) -> str:
    """The Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def retry_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds) and ``retry-after-ms``, which the official openai client
    prefers: a client that comes back in time keeps the queue fed without flooding it."""
    return {
        "Retry-After": retry_after(seconds),
        "retry-after-ms": str(max(10, int(seconds * 1000))),
    }
