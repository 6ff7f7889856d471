"""The Redis client every Redis call of the worker goes through, built from settings.

redis-py's asyncio client in one of three modes (docs/redis.md):

- one Redis: `REDIS_URL` (`redis://`, `rediss://` with redis-py's `ssl_*` options in the query,
  `unix://`); user, password and database from the URL, or `REDIS_USERNAME`/`REDIS_PASSWORD`;
- Sentinel: `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER`. Each new connection asks the
  sentinels where the master is, and a connection that meets a demoted master is dropped
  (redis-py's `SentinelConnectionPool`), so the retries below land on the new master;
- Cluster: `REDIS_CLUSTER` with `REDIS_URL` naming one node. redis-py finds the others and sends
  each script call to the node serving its keys' hash slot (`service/redis_keys.py`).

What a failing Redis costs a caller is redis-py's configuration, not code of ours:

- `REDIS_TIMEOUT_SECONDS` bounds each connect and each wait for an answer (socket timeouts);
- a call that meets a ConnectionError or a TimeoutError is tried again, `RETRIES` times, after
  jittered back-offs doubling from 0.2 s up to 1 s (0.6 to 1.2 s in all), and so is the
  connect (with its handshake) of each attempt: a Redis back within about 2 s, or a Sentinel's
  new master, costs the caller only that wait. A Redis that stops answering fails its callers
  within (1 + RETRIES)² timeouts plus the back-offs, about 13 s with the default 1 s timeout
  (tests/integration/test_redis_connection.py);
- a connection idle for `HEALTH_CHECK_SECONDS` is PINGed before it is used again, and TCP
  keepalive is on, so a Redis that vanished without closing its sockets is noticed.

A retried call may have run once already, its answer lost: every script is written to be run
twice without harm (`service/idempotency.py`, `service/limiter.py`).
"""

from __future__ import annotations

from typing import Any, TypeAlias

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError, TimeoutError

from service.settings import Settings, sentinel_address

RETRIES = 2
HEALTH_CHECK_SECONDS = 30

RedisClient: TypeAlias = Redis | RedisCluster
"""What the scripts run on: both give `register_script` and route a call by its keys."""


def _retry() -> Retry:
    return Retry(
        EqualJitterBackoff(cap=1.0, base=0.2),
        RETRIES,
        supported_errors=(ConnectionError, TimeoutError),
    )


class RedisConnection:
    """The client, and the sentinels' clients it asks for the master (closed with it)."""

    def __init__(self, client: RedisClient, sentinel: Sentinel | None = None) -> None:
        self.client = client
        self._sentinel = sentinel

    @property
    def mode(self) -> str:
        if self._sentinel is not None:
            return "sentinel"
        return "cluster" if isinstance(self.client, RedisCluster) else "single"

    async def ping(self) -> bool:
        """Every node answers (in Cluster mode, every primary and replica)."""
        return bool(await self.client.ping())

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


def connect_redis(settings: Settings) -> RedisConnection | None:
    """The client the settings describe, or None without Redis settings. Connects lazily: the
    first call opens the first connection."""
    timeout = settings.redis_timeout_seconds
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry": _retry(),
        "username": settings.redis_username,
        "password": _secret(settings.redis_password),
    }
    if settings.redis_sentinels:
        assert settings.redis_sentinel_master is not None  # the settings require it
        # redis-py's Sentinel has no annotations on its constructor.
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [sentinel_address(address) for address in settings.redis_sentinels],
            # Asking the sentinels is itself a loop over them: one try each.
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry": Retry(NoBackoff(), 0),
                "password": _secret(settings.redis_sentinel_password),
            },
        )
        master: Redis = sentinel.master_for(settings.redis_sentinel_master, **options)
        return RedisConnection(master, sentinel)
    if settings.redis_url is None:
        return None
    if settings.redis_cluster:
        return RedisConnection(RedisCluster.from_url(settings.redis_url, **options))
    # Options in the URL's query win over these (redis-py's rule), so an operator can tune them.
    return RedisConnection(Redis.from_url(settings.redis_url, **options))


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()
