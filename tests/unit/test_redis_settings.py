"""The Redis settings: three modes, each complete or refused with a message naming the fix,
and the client each mode builds (nothing connects until the first call)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from service.redis_connection import connect_redis
from service.settings import SettingsError, load_settings, sentinel_address


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"redis_sentinels": "a:26379"}, "needs ITWIN_WORKER_REDIS_SENTINEL_MASTER"),
        ({"redis_sentinel_master": "m"}, "needs ITWIN_WORKER_REDIS_SENTINELS"),
        (
            {"redis_sentinels": "a:26379", "redis_sentinel_master": "m", "redis_cluster": True},
            "exclude each other",
        ),
        (
            {"redis_sentinels": "a:1", "redis_sentinel_master": "m", "redis_url": "redis://a"},
            "unset ITWIN_WORKER_REDIS_URL",
        ),
        ({"redis_cluster": True}, "needs ITWIN_WORKER_REDIS_URL naming one node"),
        ({"redis_cluster": True, "redis_url": "unix:///tmp/redis.sock"}, "over TCP"),
        ({"redis_cluster": True, "redis_url": "redis://node:6379/2"}, "only database 0"),
        ({"redis_sentinels": "a:26379,b", "redis_sentinel_master": "m"}, "'b' is not host:port"),
        ({"redis_sentinels": "a:0", "redis_sentinel_master": "m"}, "'a:0' is not host:port"),
        ({"redis_url": "http://redis"}, "must start with redis://"),
        ({"redis_url": "redis://redis/0?db=x"}, "Invalid value for 'db'"),
        ({"redis_url": "rediss://redis?ssl_cert_reqs=none"}, "always verified"),
        ({"redis_url": "rediss://redis?ssl_check_hostname=false"}, "always verified"),
        (
            {"redis_url": "redis://:secret@redis", "redis_password": "other"},
            "ITWIN_WORKER_REDIS_PASSWORD and a password in ITWIN_WORKER_REDIS_URL",
        ),
        ({"redis_prefix": "team{a}"}, "ITWIN_WORKER_REDIS_PREFIX"),
        ({"redis_prefix": ""}, "ITWIN_WORKER_REDIS_PREFIX"),
    ],
)
def test_incomplete_or_conflicting_redis_settings_are_refused(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(**settings)


def test_a_refused_rule_across_settings_names_them_without_a_made_up_variable() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(redis_cluster=True)
    assert "ITWIN_WORKER_SETTINGS" not in str(raised.value)
    assert str(raised.value).endswith(
        "ITWIN_WORKER_REDIS_CLUSTER needs ITWIN_WORKER_REDIS_URL naming one node"
    )


def test_sentinel_addresses() -> None:
    assert sentinel_address("sentinel-0.redis:26379") == ("sentinel-0.redis", 26379)
    assert sentinel_address("[::1]:26379") == ("::1", 26379)


def test_without_redis_settings_there_is_no_client() -> None:
    assert connect_redis(load_settings()) is None


async def test_a_url_gives_one_redis_with_its_tls_database_and_timeouts() -> None:
    connection = connect_redis(
        load_settings(
            redis_url="rediss://worker@redis.example:6380/3?ssl_ca_certs=/etc/ca.pem",
            redis_password="pw",
            redis_timeout_seconds=1.5,
        )
    )
    assert connection is not None
    assert connection.mode == "single"
    client = connection.client
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example", 6380, 3)
    assert (kwargs["username"], kwargs["password"]) == ("worker", "pw")
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 1.5
    assert kwargs["health_check_interval"] == 30
    await connection.aclose()


async def test_a_unix_socket_url() -> None:
    connection = connect_redis(load_settings(redis_url="unix:///run/redis.sock?db=2"))
    assert connection is not None
    assert isinstance(connection.client, Redis)
    pool = connection.client.connection_pool
    assert pool.connection_class is UnixDomainSocketConnection
    assert (pool.connection_kwargs["path"], pool.connection_kwargs["db"]) == ("/run/redis.sock", 2)
    await connection.aclose()


async def test_sentinels_give_a_client_of_the_master_they_name() -> None:
    connection = connect_redis(
        load_settings(
            redis_sentinels="s1:26379, s2:26380",
            redis_sentinel_master="primary",
            redis_password="master-pw",
            redis_sentinel_password="sentinel-pw",
        )
    )
    assert connection is not None
    assert connection.mode == "sentinel"
    assert isinstance(connection.client, Redis)
    pool = connection.client.connection_pool
    assert pool.service_name == "primary"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["password"] == "master-pw"
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sentinel-pw"}
    await connection.aclose()


async def test_cluster_mode_gives_a_cluster_client() -> None:
    connection = connect_redis(
        load_settings(redis_url="redis://node-0.redis:6379", redis_cluster=True)
    )
    assert connection is not None
    assert connection.mode == "cluster"
    assert isinstance(connection.client, RedisCluster)
    await connection.aclose()
