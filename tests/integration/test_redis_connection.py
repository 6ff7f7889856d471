"""The worker's Redis client (redis-py, as `service/redis_connection.py` configures it) against
Redis servers the tests start, stop and freeze: what callers see when Redis goes away."""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest
from redis.exceptions import ConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from service.idempotency import Leased, RedisOutcomes
from service.redis_connection import RETRIES, RedisConnection, connect_redis
from service.redis_keys import RedisKeys
from service.settings import load_settings
from tests.support import RedisServers


def outcomes_on(connection: RedisConnection) -> RedisOutcomes:
    return RedisOutcomes(connection.client, RedisKeys(f"test-{uuid.uuid4().hex}"), 60, 5)


async def test_a_redis_back_within_the_retries_costs_the_caller_nothing(
    redis_servers: RedisServers,
) -> None:
    server = await redis_servers.server()
    connection = connect_redis(load_settings(redis_url=server.url))
    assert connection is not None
    outcomes = outcomes_on(connection)
    try:
        assert isinstance(await outcomes.claim("before"), Leased)
        server.stop()
        # In flight while nobody listens: redis-py backs off and tries again.
        claim = asyncio.create_task(outcomes.claim("during"))
        await asyncio.sleep(0.3)
        assert not claim.done()
        await redis_servers.server(port=server.port)
        assert isinstance(await claim, Leased)
    finally:
        await connection.aclose()


async def test_a_vanished_redis_fails_the_caller_and_a_later_call_reconnects(
    redis_servers: RedisServers,
) -> None:
    server = await redis_servers.server()
    connection = connect_redis(load_settings(redis_url=server.url))
    assert connection is not None
    outcomes = outcomes_on(connection)
    try:
        assert isinstance(await outcomes.claim("before"), Leased)
        server.stop()
        with pytest.raises(ConnectionError):
            await outcomes.claim("gone")
        assert not await _ready(connection)
        await redis_servers.server(port=server.port)
        assert isinstance(await outcomes.claim("after"), Leased)
        assert await _ready(connection)
    finally:
        await connection.aclose()


async def test_a_redis_that_stops_answering_fails_its_callers_in_bounded_time(
    redis_servers: RedisServers,
) -> None:
    """A frozen Redis (SIGSTOP: the kernel still accepts connections, nothing answers): each
    attempt gives up after the timeout, the call after its retries; then it answers again."""
    server = await redis_servers.server()
    timeout = 0.3
    connection = connect_redis(load_settings(redis_url=server.url, redis_timeout_seconds=timeout))
    assert connection is not None
    outcomes = outcomes_on(connection)
    loop = asyncio.get_running_loop()
    try:
        assert isinstance(await outcomes.claim("before"), Leased)
        server.process.send_signal(signal.SIGSTOP)
        started = loop.time()
        calls = [outcomes.claim(f"frozen-{i}") for i in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = loop.time() - started
        assert all(isinstance(result, RedisTimeout) for result in results), results
        # Each attempt and each reconnect of an attempt is tried 1 + RETRIES times, with at
        # most 1.2 s of back-off at each level (service/redis_connection.py).
        attempts = 1 + RETRIES
        assert attempts * timeout <= elapsed < attempts**2 * timeout + attempts * 1.2 + 1.0
        server.process.send_signal(signal.SIGCONT)
        assert isinstance(await outcomes.claim("thawed"), Leased)
    finally:
        server.process.send_signal(signal.SIGCONT)
        await connection.aclose()


async def _ready(connection: RedisConnection) -> bool:
    try:
        return await connection.ping()
    except ConnectionError:
        return False
