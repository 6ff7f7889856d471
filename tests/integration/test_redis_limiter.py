"""The Lua scripts against a real Redis: the same arithmetic as the pure functions, and the
idempotency claim that reserves the first API slot in passing."""

from __future__ import annotations

import random
import uuid

import pytest
from redis.asyncio import Redis

from service.idempotency import Busy, Leased, Recorded, RedisOutcomes
from service.limiter import Bucket, RedisLimiter, State, pause, reserve
from service.redis_keys import RedisKeys


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_script_matches_the_pure_arithmetic(redis: Redis, redis_prefix: str) -> None:
    buckets = (Bucket(rate=20, burst=5), Bucket(rate=0.5, burst=40))
    clock = Clock()
    keys = RedisKeys(f"{redis_prefix}:{uuid.uuid4().hex}")
    limiter = RedisLimiter(redis, keys, buckets, clock=clock)
    state = State.empty(buckets)
    rng = random.Random(7)
    for _ in range(300):
        clock.now += rng.choice([0.0, 0.0, 0.01, 0.2, 1.5])
        if rng.random() < 0.05:
            seconds = rng.uniform(0, 3)
            await limiter.pause(seconds)
            state = pause(buckets, state, clock.now + seconds)
            continue
        expected, state = reserve(buckets, state, clock.now)
        assert await limiter._reserve() == pytest.approx(expected - clock.now, abs=2e-6)
        remaining = max(state.paused_until - clock.now, 0.0)
        assert await limiter._pause_remaining() == pytest.approx(remaining, abs=2e-6)


async def test_state_expires_once_the_bucket_is_full_again(redis: Redis, redis_prefix: str) -> None:
    keys = RedisKeys(f"{redis_prefix}:{uuid.uuid4().hex}")
    limiter = RedisLimiter(redis, keys, (Bucket(rate=10, burst=2),))
    await limiter.acquire()
    ttl_ms = await redis.pttl(keys.limiter)
    assert 0 < ttl_ms <= 1100


async def test_a_leased_claim_reserves_the_first_slot_in_the_same_script(
    redis: Redis, redis_prefix: str
) -> None:
    clock = Clock()
    keys = RedisKeys(f"{redis_prefix}:{uuid.uuid4().hex}")
    limiter = RedisLimiter(redis, keys, (Bucket(rate=10, burst=1),), clock=clock)
    outcomes = RedisOutcomes(redis, keys, ttl=60, lease=5, limiter=limiter)

    first = await outcomes.claim("c1", reserve=True)
    second = await outcomes.claim("c2", reserve=True)
    assert isinstance(first, Leased)
    assert first.reservation is not None
    assert isinstance(second, Leased)
    assert second.reservation is not None
    assert (first.reservation.wait, second.reservation.wait) == pytest.approx((0.0, 0.1))

    # No slot is spent on a claim that will not call: busy, recorded, or not asked to.
    assert isinstance(await outcomes.claim("c2", reserve=True), Busy)
    await outcomes.record("c1", first.token, b"{}")
    assert isinstance(await outcomes.claim("c1", reserve=True), Recorded)
    unreserved = await outcomes.claim("c3")
    assert isinstance(unreserved, Leased)
    assert unreserved.reservation is None
    assert await limiter._reserve() == pytest.approx(0.2)
