"""Outages of the worker's dependencies: how a caller says "this one is down, wait", and Redis's
up/down state as the worker last saw it.

A command that meets an outage is not the command's fault, so it spends nothing of its own
(no retry, no delay, no delivery): the pipeline raises `DependencyDown`, releases what it holds
and waits (`Outages.wait`) while the delivery stays unacked in this consumer. The consumers'
prefetch bounds how many wait, so no new command is taken meanwhile (docs/failure-modes.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog
from redis.exceptions import ClusterError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.metrics import Metrics
from service.redis_connection import ClusterUnavailable

log = structlog.get_logger("itwin_worker.outages")

REDIS_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
    ClusterUnavailable,
)
"""Every way redis-py 8.1 says "Redis cannot answer now", in every mode; every caller of Redis
catches exactly these (docs/redis.md has the table, tests/unit/test_redis_errors.py the tree).

- ConnectionError: refused, reset, closed, LOADING, a failed AUTH, a full pool, Sentinel naming
  no master; TimeoutError: no answer within `REDIS_TIMEOUT_SECONDS`;
- ClusterError: CLUSTERDOWN and MASTERDOWN (its subclasses), and "TTL exhausted" (a call
  redirected or told TRYAGAIN 16 times over);
- TryAgainError: a slot being moved (redis-py tries again itself; this is what it would raise);
- SlotNotCoveredError: no node serves the key's slot in redis-py's view;
- ClusterUnavailable: the layout could not be learnt (`service/redis_connection.py`).

Not among them, so a crash bounded by the delivery limit: a script error, a wrong key type, any
other answer of Redis to a call it received (ResponseError: READONLY, OOM, NOPERM, CROSSSLOT),
a value redis-py cannot encode (DataError), and a call redis-py cannot route."""

REDIS = "redis"


class DependencyDown(Exception):
    """A dependency the call needs does not answer: wait for it, do not fail the command."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"{dependency} is unavailable")
        self.dependency = dependency


class Outages:
    """Where the pipeline waits: Redis's own up/down view, and a wait per breaker by name.

    Redis is marked down by the first caller that meets it unable to answer (`REDIS_UNAVAILABLE`)
    and up by the first health check that passes (`RedisConnection.ping`: PING, or in a Cluster
    `cluster_state:ok` on every primary); each change is logged once and shown in the
    `dependency_down` gauge.
    """

    def __init__(
        self,
        metrics: Metrics,
        ping: Callable[[], Awaitable[bool]] | None,
        breakers: Mapping[str, Callable[[], Awaitable[None]]],
        poll_seconds: float = 0.5,
    ) -> None:
        self._metrics = metrics
        self._ping = ping
        self._breakers = dict(breakers)
        self._poll = poll_seconds
        self.redis_down = False
        if ping is not None:
            metrics.dependency_down.labels(REDIS).set(0)

    def redis_failed(self) -> None:
        if not self.redis_down:
            self.redis_down = True
            self._metrics.dependency_down.labels(REDIS).set(1)
            log.error("redis does not answer: commands wait in their queues until it does")

    def redis_answered(self) -> None:
        if self.redis_down:
            self.redis_down = False
            self._metrics.dependency_down.labels(REDIS).set(0)
            log.info("redis answers again: work resumes")

    async def wait(self, dependency: str) -> None:
        """Return once the dependency may be tried again (Redis answers; a breaker closed or
        its probe is due)."""
        if dependency == REDIS:
            await self.wait_for_redis()
            return
        await self._breakers[dependency]()

    async def wait_for_redis(self) -> None:
        self.redis_failed()
        while self.redis_down:
            await asyncio.sleep(self._poll)
            if self._ping is None:
                return
            try:
                async with asyncio.timeout(self._poll * 4):
                    if await self._ping():
                        self.redis_answered()
            except (*REDIS_UNAVAILABLE, OSError):
                continue
