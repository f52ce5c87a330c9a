"""Token buckets per key (a user id, a client address), sans-IO: the caller passes the time.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second; each attempt takes
one, or is refused when none is left. A full bucket is the same as no bucket, so buckets that have
refilled are forgotten (checked at most once per refill period): memory follows the users that were
active lately, not every user ever seen, and a user who reconnects does not start afresh.
"""

from __future__ import annotations

__all__ = ["RateLimiter", "refill"]


def refill(tokens: float, then: float, now: float, burst: int, rate: float) -> float:
    """The tokens of a bucket that held ``tokens`` at ``then``: ``rate`` a second more, at most
    ``burst``. The one token-bucket rule; the per-session packet limit (engineio) uses it too."""
    return min(float(burst), tokens + (now - then) * rate) if now > then else tokens


class RateLimiter:
    __slots__ = ("_buckets", "_next_sweep")

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at time)
        self._next_sweep = float("-inf")

    def take(self, key: str, now: float, burst: int, rate: float) -> bool:
        """Take a token for ``key`` at ``now``; False if there is none."""
        self._sweep(now, burst, rate)
        tokens, then = self._buckets.get(key, (float(burst), now))
        tokens = refill(tokens, then, now, burst, rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        return allowed

    def allows(self, key: str, now: float, burst: int, rate: float) -> bool:
        """Whether ``key`` has a token at ``now``, without taking it."""
        tokens, then = self._buckets.get(key, (float(burst), now))
        return refill(tokens, then, now, burst, rate) >= 1.0

    def _sweep(self, now: float, burst: int, rate: float) -> None:
        if now < self._next_sweep:
            return
        refill = burst / rate  # seconds from empty to full
        self._buckets = {k: (t, at) for k, (t, at) in self._buckets.items() if t + (now - at) * rate < burst}
        self._next_sweep = now + refill

    def __len__(self) -> int:
        return len(self._buckets)
