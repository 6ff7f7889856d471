"""The simulator's own per-client token bucket, standing in for the subscription rate limit."""

from __future__ import annotations


class TokenBucket:
    """`capacity` calls at once, refilled at `rate` calls a second."""

    __slots__ = ("_capacity", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, capacity: int, now: float) -> None:
        self._rate = rate
        self._capacity = float(capacity)
        self._tokens = float(capacity)
        self._updated = now

    def take(self, now: float) -> float:
        """Spend one call: 0.0 when granted, else the seconds until one would be."""
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class ClientLimiter:
    """One bucket per client id, created on the client's first call."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, client: str, now: float) -> float:
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self._rate, self._burst, now)
        return bucket.take(now)
