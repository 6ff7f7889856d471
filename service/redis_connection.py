"""The Redis client every Redis call of the worker goes through, built from settings.

redis-py's asyncio client in one of three modes (docs/redis.md):

- one Redis: `REDIS_URL` (`redis://`, `rediss://` with redis-py's `ssl_*` options in the query,
  `unix://`); user, password and database from the URL, or `REDIS_USERNAME`/`REDIS_PASSWORD`;
- Sentinel: `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER`. Each new connection asks the
  sentinels where the master is, and a connection that meets a demoted master is dropped
  (redis-py's `SentinelConnectionPool`), so the retries below land on the new master;
- Cluster: `REDIS_CLUSTER` with `REDIS_URL` naming one node. redis-py finds the others and sends
  each script call to the node serving its keys' hash slot (`service/redis_keys.py`).

A cluster that cannot serve a slot now fails its callers with errors of their own
(`service/outages.py` lists every one). Two of them redis-py raises as if they were bugs, and
`ClusterClient` gives them the class they mean:

- a bare `RedisClusterException` when it cannot learn which node serves which slot (no node
  reachable, slots not all served, nodes disagreeing), as it does for a call it cannot route:
  those three become `ClusterUnavailable`;
- a connection that redis-py's cluster client closed under a caller's feet (it drops every
  connection on CLUSTERDOWN, and a node's idle ones on a connection error) fails that caller's
  write with an AttributeError or RuntimeError from the transport, not a ConnectionError
  (redis-py issue 4287, fixed after 8.1): the call is tried again with the same arguments, as
  redis-py tries a ConnectionError, and a ConnectionError it becomes after those tries.

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

import traceback
from collections.abc import Mapping
from typing import Any, TypeAlias

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError, RedisClusterException, RedisError, TimeoutError
from redis.typing import EncodableT

from service.settings import Settings, sentinel_address

RETRIES = 2
HEALTH_CHECK_SECONDS = 30

RedisClient: TypeAlias = Redis | RedisCluster
"""What the scripts run on: both give `register_script` and route a call by its keys."""

TOPOLOGY_UNAVAILABLE = (
    "Redis Cluster cannot be connected",
    "All slots are not covered",
    "startup_nodes could not agree on a valid slots cache",
)
"""How redis-py 8.1's `NodesManager.initialize` begins the messages of the three failures to
learn the cluster's layout (tests/unit/test_redis_errors.py finds each in its source)."""

_SOCKET_MODULES = frozenset(
    {
        "redis.asyncio.connection",
        "redis._parsers.base",
        "redis._parsers.hiredis",
        "redis._parsers.resp2",
        "redis._parsers.resp3",
    }
)
"""Where redis-py reads and writes its sockets (its value parsers live elsewhere)."""


class ClusterUnavailable(RedisError):
    """The cluster's layout could not be learnt: no node answered, or not every slot is served
    by a node the others agree on. Redis cannot answer now; it is not the call's fault."""


def cluster_failure(error: Exception) -> Exception | None:
    """What a failure of redis-py's cluster client means, when its class says otherwise: a
    `ClusterUnavailable` or a `ConnectionError` to raise instead, or None (it means what it
    says: a `RedisClusterException` for a call it cannot route is a bug)."""
    if type(error) is RedisClusterException:
        message = str(error)
        if not message.startswith(TOPOLOGY_UNAVAILABLE):
            return None
        # No node reachable is an outage; a node that refused CLUSTER SLOTS (cluster mode off)
        # is a configuration to fix, and stays what redis-py said.
        cause = error.__cause__
        if message.startswith(TOPOLOGY_UNAVAILABLE[0]) and not isinstance(
            cause, ConnectionError | TimeoutError | OSError
        ):
            return None
        return ClusterUnavailable(message)
    if isinstance(error, AttributeError | TypeError | RuntimeError) and _closed_under_io(error):
        return ConnectionError(f"connection closed during a call ({type(error).__name__})")
    return None


def _closed_under_io(error: BaseException) -> bool:
    """The error came from the socket layer of redis-py: its innermost redis-py frame reads or
    writes a connection (not packing a command, not parsing a value)."""
    innermost = ("", "")
    for frame, _ in traceback.walk_tb(error.__traceback__):
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith("redis."):
            innermost = (module, frame.f_code.co_name)
    module, function = innermost
    return module in _SOCKET_MODULES and function not in ("pack_command", "pack_commands")


class ClusterClient(RedisCluster):
    """redis-py's cluster client, its failures given the class they mean (`cluster_failure`).

    A subclass because redis-py has no hook for this: every call (scripts, script loads, the
    health check) goes through `execute_command`, so one override covers them all.
    """

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        closed_under = 0
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except Exception as error:
                meant = cluster_failure(error)
                if meant is None:
                    raise
                # A connection closed under the call: tried again with the same arguments, as
                # redis-py tries a ConnectionError (a claim whose answer was lost then finds
                # its own lease, instead of waiting the lease out under a new token).
                closed_under += type(meant) is ConnectionError
                if type(meant) is ConnectionError and closed_under <= RETRIES:
                    continue
                raise meant from error


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
        """Redis can serve every key now. One Redis (Sentinel's master): it answers PING. A
        Cluster: every primary answers and says `cluster_state:ok` (a node answers PING while
        the cluster refuses keys with CLUSTERDOWN)."""
        if isinstance(self.client, RedisCluster):
            answers = await self.client.cluster_info(target_nodes=RedisCluster.PRIMARIES)
            return all(info.get("cluster_state") == "ok" for info in _per_node(answers))
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
        return RedisConnection(ClusterClient.from_url(settings.redis_url, **options))
    # Options in the URL's query win over these (redis-py's rule), so an operator can tune them.
    return RedisConnection(Redis.from_url(settings.redis_url, **options))


def _per_node(answers: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """redis-py answers one node's CLUSTER INFO as it is, several keyed by node name."""
    if "cluster_state" in answers:
        return [answers]
    return list(answers.values())


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()
