"""The Lua scripts against a real Redis, and a real Redis Cluster: the same arithmetic as the
pure functions, a failover that may have lost slots, and the idempotency claim, whatever the
command id holds."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError

from service.idempotency import Busy, Leased, Orphaned, Recorded, RedisOutcomes
from service.limiter import Bucket, RedisLimiter, Reservation, State, pause, reserve, take
from service.redis_connection import RedisClient, connect_redis
from service.redis_keys import RedisKeys
from service.settings import load_settings
from tests.support import REDIS_URL

HOSTILE_IDS = ["}", "{", "{}", "}{", "a}b{c}", "}:limiter", "x" * 250, "ü{ü}"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(redis_settings: dict[str, Any]) -> AsyncIterator[tuple[RedisClient, RedisKeys]]:
    """The worker's own client (plain Redis or Cluster) and the keys under a fresh prefix."""
    connection = connect_redis(load_settings(**redis_settings))
    assert connection is not None
    yield connection.client, RedisKeys(redis_settings["redis_prefix"])
    await connection.aclose()


async def test_script_matches_the_pure_arithmetic(store: tuple[RedisClient, RedisKeys]) -> None:
    """Commands, polls (with the share the commands leave them: holes) and pauses."""
    client, keys = store
    buckets = (Bucket(rate=20, burst=5), Bucket(rate=0.5, burst=40))
    clock = Clock()
    share = 0.25
    limiter = RedisLimiter(client, keys, buckets, clock=clock, poll_share=share)
    lateness = limiter._lateness_allowed
    state = State.empty(buckets)
    rng = random.Random(7)
    granted = 0
    for _ in range(400):
        clock.now += rng.choice([0.0, 0.0, 0.01, 0.03, 0.2, 1.5])
        roll = rng.random()
        if roll < 0.05:
            seconds = rng.uniform(0, 3)
            await limiter.pause(seconds)
            state = pause(buckets, state, clock.now + seconds)
            continue
        if roll < 0.5:
            expected_wait, state = take(buckets, state, clock.now, lateness)
            wait = await limiter._take()
            assert (wait is None) == (expected_wait == 0)
            granted += wait is None
            if wait is not None:
                assert wait == pytest.approx(expected_wait, abs=2e-6)
            continue
        expected, state = reserve(buckets, state, clock.now, share)
        wait, _ = await limiter._reserve()
        assert wait == pytest.approx(expected - clock.now, abs=2e-6)
        remaining, _, _ = await limiter._run("check")
        assert remaining == pytest.approx(max(state.paused_until - clock.now, 0.0), abs=2e-6)
    stored = await client.hget(keys.limiter, "holes")
    assert isinstance(stored, bytes)
    assert [float(t) for t in stored.split()] == pytest.approx(state.holes, abs=2e-6)
    assert granted > 0


async def test_a_new_epoch_spends_the_burst_and_voids_the_old_epochs_slots(
    redis: Redis, redis_prefix: str
) -> None:
    """What a failover leaves: the state as replicated, written under the old master's
    replication id. The first reservation after it starts at the steady rate, and a slot of
    the old epoch no longer holds (it may have been lost, and given to someone else)."""
    keys = RedisKeys(f"{redis_prefix}:{uuid.uuid4().hex}")
    clock = Clock()
    limiter = RedisLimiter(redis, keys, (Bucket(rate=10, burst=5),), clock=clock)
    assert [(await limiter._reserve())[0] for _ in range(3)] == pytest.approx([0, 0, 0])
    _, epoch = await limiter._reserve()
    assert await limiter._holds(Reservation(0.0, 0.0, 0.0, epoch))
    await redis.hset(keys.limiter, "epoch", "the-old-masters-replication-id")
    assert not await limiter._holds(Reservation(0.0, 0.0, 0.0, "the-old-masters-replication-id"))
    waits = [(await limiter._reserve())[0] for _ in range(3)]
    # 4 of the 5 burst tokens were spent: one would be left, but the new epoch takes it.
    assert waits == pytest.approx([0.0, 0.1, 0.2])
    assert (await limiter._reserve())[1] == epoch


async def test_the_state_never_expires(redis: Redis, redis_prefix: str) -> None:
    """A failover must find it: a state that expired on the old master but not yet on the new
    one would not be noticed as stale."""
    keys = RedisKeys(f"{redis_prefix}:{uuid.uuid4().hex}")
    limiter = RedisLimiter(redis, keys, (Bucket(rate=10, burst=2),))
    await limiter.acquire()
    assert await redis.pttl(keys.limiter) == -1


async def test_claim_record_and_release(store: tuple[RedisClient, RedisKeys]) -> None:
    client, keys = store
    outcomes = RedisOutcomes(client, keys, ttl=60, lease=5)
    for command_id in ["c1", *HOSTILE_IDS]:
        first = await outcomes.claim(command_id)
        assert isinstance(first, Leased)
        busy = await outcomes.claim(command_id)
        assert isinstance(busy, Busy)
        assert 4 < busy.remaining <= 5
        await outcomes.record(command_id, first.token, f"event of {command_id}".encode())
        assert await outcomes.claim(command_id) == Recorded(f"event of {command_id}".encode())
        replay = await outcomes.claim(command_id, fresh=True)
        assert isinstance(replay, Leased)
        await outcomes.release(command_id, replay.token)
        assert isinstance(await outcomes.claim(command_id, fresh=True), Leased)


async def test_a_request_marked_sent_makes_its_orphan_a_conclusion_not_a_second_send(
    store: tuple[RedisClient, RedisKeys],
) -> None:
    """The recovery point on a plain Redis and on a Cluster: an orphan marked sent is
    `Orphaned` for whoever takes it over; a holder whose lease is gone may not mark; a lease
    is renewed while held; the first outcome recorded stays."""
    client, keys = store
    outcomes = RedisOutcomes(client, keys, ttl=60, lease=0.3)
    for command_id in ["c1", *HOSTILE_IDS]:
        first = await outcomes.claim(command_id)
        assert isinstance(first, Leased)
        assert await outcomes.renew(command_id, first.token)
        assert await outcomes.mark_sent(command_id, first.token)
        await asyncio.sleep(0.4)  # its holder died: the lease ends, the mark stays
        assert not await outcomes.renew(command_id, first.token)
        taken = await outcomes.claim(command_id)
        assert isinstance(taken, Orphaned)
        assert not await outcomes.mark_sent(command_id, first.token), "not the holder now"
        assert await outcomes.record(command_id, taken.token, b"unknown") == b"unknown"
        assert await outcomes.record(command_id, first.token, b"created") == b"unknown"
        assert await outcomes.claim(command_id) == Recorded(b"unknown")
        replay = await outcomes.claim(command_id, fresh=True)
        assert isinstance(replay, Leased), "an operator's replay sends it afresh"
        await outcomes.record(command_id, replay.token, b"created", replace=True)
        assert await outcomes.claim(command_id) == Recorded(b"created")


async def test_only_a_release_that_proves_nothing_was_sent_drops_the_mark(
    store: tuple[RedisClient, RedisKeys],
) -> None:
    client, keys = store
    outcomes = RedisOutcomes(client, keys, ttl=60, lease=5)
    kept = await outcomes.claim("kept")
    assert isinstance(kept, Leased)
    assert await outcomes.mark_sent("kept", kept.token)
    await outcomes.release("kept", kept.token)
    assert isinstance(await outcomes.claim("kept"), Orphaned)
    dropped = await outcomes.claim("dropped")
    assert isinstance(dropped, Leased)
    assert await outcomes.mark_sent("dropped", dropped.token)
    await outcomes.release("dropped", dropped.token, unsent=True)
    assert isinstance(await outcomes.claim("dropped"), Leased)
    # A release Redis never heard: the same holder claims again with its token, and the mark
    # it left (nothing followed it) goes; anyone else's mark stays.
    again = await outcomes.claim("again")
    assert isinstance(again, Leased)
    assert await outcomes.mark_sent("again", again.token)
    assert await outcomes.claim("again", unsent_token=again.token) == Leased(again.token)
    assert isinstance(await outcomes.claim("again", unsent_token="not-the-marker"), Busy)


async def test_a_claim_run_twice_for_one_call_is_leased_both_times(
    redis: Redis, redis_prefix: str
) -> None:
    """redis-py retries a call whose answer was lost: the second run finds its own lease."""
    keys = RedisKeys(f"{redis_prefix}:{uuid.uuid4().hex}")
    outcomes = RedisOutcomes(redis, keys, ttl=60, lease=5)
    lease_args = ["the-token", "5000", "0", "0"]
    claim = outcomes._claim
    command_keys = [keys.outcome("c1"), keys.lease("c1"), keys.sent("c1")]
    assert await claim(keys=command_keys, args=lease_args) == [b"leased"]
    assert await claim(keys=command_keys, args=lease_args) == [b"leased"]
    assert (await claim(keys=command_keys, args=["another", "5000", "0", "0"]))[0] == b"busy"


async def test_the_url_chooses_the_database_and_the_user(redis: Redis, redis_prefix: str) -> None:
    """An ACL user allowed only the worker's keys and the commands its scripts run, on
    database 5: the scripts work there, and a wrong password is refused."""
    prefix = f"{redis_prefix}:{uuid.uuid4().hex}"
    user, password = f"{redis_prefix}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await redis.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=[f"{prefix}:*"],
        commands=["+evalsha", "+eval", "+script|load", "+select", "+ping", "+info", "+time",
                  "+get", "+set", "+del", "+pttl", "+pexpire", "+hmget", "+hset"],
    )  # fmt: skip
    base = REDIS_URL.split("//", 1)[1].rsplit("/", 1)[0]
    authorised = connect_redis(load_settings(redis_url=f"redis://{user}:{password}@{base}/5"))
    refused = connect_redis(load_settings(redis_url=f"redis://{user}:wrong@{base}/5"))
    in_five = Redis.from_url(f"redis://{base}/5")
    assert authorised is not None
    assert refused is not None
    try:
        keys = RedisKeys(prefix)
        outcomes = RedisOutcomes(authorised.client, keys, ttl=60, lease=5)
        leased = await outcomes.claim("c1")
        assert isinstance(leased, Leased)
        await outcomes.record("c1", leased.token, b"done")
        await RedisLimiter(authorised.client, keys, (Bucket(rate=10, burst=2),)).acquire()
        assert await redis.get(keys.outcome("c1")) is None
        assert await in_five.get(keys.outcome("c1")) == b"done"
        assert await in_five.exists(keys.limiter) == 1
        with pytest.raises(AuthenticationError):
            await refused.ping()
    finally:
        await in_five.delete(keys.outcome("c1"), keys.limiter)
        await in_five.aclose()
        await authorised.aclose()
        await refused.aclose()
        await redis.acl_deluser(user)


class Checks:
    """Counts a limiter's `check` calls (a sleeper asking the store again), each held `delay`
    seconds first, as a slower store would."""

    def __init__(self, limiter: RedisLimiter, delay: float = 0.0) -> None:
        self.count = 0
        run = limiter._run

        async def counted(mode: str, seconds: float = 0.0) -> tuple[float, str, bool]:
            if mode == "check":
                self.count += 1
                await asyncio.sleep(delay)
            return await run(mode, seconds)

        limiter._run = counted  # type: ignore[method-assign]


async def test_a_sleeper_learns_of_another_replicas_pause_and_fresh_answers_spare_the_check(
    redis: Redis, redis_prefix: str
) -> None:
    """Two replicas on one budget. A caller asleep towards its slot while another replica
    records a 429's pause starts after the pause, not in it. Under load the answers of the
    other reservations tell a waking caller what it needs: most wake without a second call."""
    keys = RedisKeys(f"{redis_prefix}:{uuid.uuid4().hex}")
    one = RedisLimiter(redis, keys, (Bucket(rate=2, burst=1),))
    other = RedisLimiter(redis, keys, (Bucket(rate=2, burst=1),))
    await one.acquire()
    sleeper = asyncio.create_task(one.acquire())
    await asyncio.sleep(0.1)
    paused_at = asyncio.get_running_loop().time()
    await other.pause(1.0)
    await sleeper
    assert asyncio.get_running_loop().time() - paused_at >= 0.99

    busy = RedisLimiter(redis, RedisKeys(f"{redis_prefix}:{uuid.uuid4().hex}"),
                        (Bucket(rate=200, burst=1),))  # fmt: skip
    checks = Checks(busy)

    async def caller(delay: float) -> None:
        await asyncio.sleep(delay)
        await busy.acquire()

    # Arriving twice as fast as the budget: each sleeps, while the others keep reserving.
    await asyncio.gather(*(caller(i / 400) for i in range(200)))
    assert 0 < checks.count < 50, f"{checks.count} of 200 callers asked again"


async def test_sleepers_waking_on_one_tick_share_one_check(redis: Redis, redis_prefix: str) -> None:
    """At 40/s with a burst of 10 (a 100 ms tick, slots 25 ms apart), twelve callers that wait
    after the burst wake on three or four ticks, each time with the newest answer older than
    allowed: about one check per tick, not one per caller (twelve), and a caller cancelled while it
    waits leaves the check to the others."""
    limiter = RedisLimiter(redis, RedisKeys(f"{redis_prefix}:{uuid.uuid4().hex}"),
                           (Bucket(rate=40, burst=10),))  # fmt: skip
    # A slower store, within the lateness allowed (12.5 ms).
    checks = Checks(limiter, delay=0.003)
    for _ in range(10):
        await limiter.acquire()
    sleepers = [asyncio.create_task(limiter.acquire()) for _ in range(12)]
    while not checks.count:
        await asyncio.sleep(0.001)
    next(sleeper for sleeper in sleepers if not sleeper.done()).cancel()
    done = await asyncio.gather(*sleepers, return_exceptions=True)
    cancelled = [d for d in done if isinstance(d, asyncio.CancelledError)]
    assert len(cancelled) == 1
    assert all(isinstance(wait, float) for wait in done if wait not in cancelled)
    assert 1 <= checks.count <= 6, f"{checks.count} checks for 12 sleepers"
