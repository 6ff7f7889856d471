"""Token-bucket (GCRA) arithmetic: pure functions and the local limiter on a fake clock."""

from __future__ import annotations

import bisect
import random

import pytest

from service.limiter import (
    Bucket,
    LocalLimiter,
    State,
    buckets_for,
    pause,
    reserve,
)


def max_in_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    return max(
        bisect.bisect_right(starts, start + window + 1e-9) - i for i, start in enumerate(starts)
    )


def reserve_all(buckets: tuple[Bucket, ...], arrivals: list[float]) -> list[float]:
    state = State.empty(buckets)
    starts = []
    for now in arrivals:
        start, state = reserve(buckets, state, now)
        starts.append(start)
    return starts


def test_full_bucket_allows_a_burst_then_the_rate() -> None:
    buckets = (Bucket(rate=10, burst=3),)
    starts = reserve_all(buckets, [0.0] * 6)
    assert starts == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2, 0.3])


def test_an_idle_bucket_refills() -> None:
    buckets = (Bucket(rate=10, burst=2),)
    starts = reserve_all(buckets, [0.0, 0.0, 0.0, 5.0, 5.0, 5.0])
    assert starts == pytest.approx([0.0, 0.0, 0.1, 5.0, 5.0, 5.1])


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("window", [0.5, 1.0, 5.0])
def test_no_window_exceeds_rate_times_window_plus_burst(seed: int, window: float) -> None:
    rng = random.Random(seed)
    rate, burst = rng.choice([(20.0, 5), (8.0, 20), (3.0, 1), (100.0, 50)])
    arrivals = sorted(rng.uniform(0, 10) for _ in range(rng.randint(50, 600)))
    starts = reserve_all((Bucket(rate, burst),), arrivals)
    assert all(start >= now for start, now in zip(starts, arrivals, strict=True))
    assert starts == sorted(starts), "callers are served in arrival order"
    assert max_in_window(starts, window) <= rate * window + burst


def test_backlog_drains_at_the_rate() -> None:
    starts = reserve_all((Bucket(rate=20, burst=5),), [0.0] * 605)
    assert starts[-1] == pytest.approx(600 / 20)


def test_hourly_budget_never_exceeded_in_an_hour() -> None:
    buckets = buckets_for(per_second=50.0, burst=10, per_hour=5000)
    starts = reserve_all(buckets, [0.0] * 12000)
    assert max_in_window(starts, 3600.0) <= 5000
    assert max_in_window(starts, 1.0) <= 60


def test_default_community_settings_fit_500_a_minute() -> None:
    (bucket,) = buckets_for(8.0, 20)
    assert bucket.rate * 60 + bucket.burst <= 500


def test_pause_holds_every_start_and_restarts_without_burst() -> None:
    buckets = (Bucket(rate=10, burst=5),)
    state = State.empty(buckets)
    state = pause(buckets, state, until=3.0)
    starts = []
    for _ in range(4):
        start, state = reserve(buckets, state, now=1.0)
        starts.append(start)
    assert starts == pytest.approx([3.0, 3.1, 3.2, 3.3])
    assert state.paused_until == 3.0


def test_pause_never_shortens_an_earlier_pause() -> None:
    buckets = (Bucket(rate=10, burst=5),)
    state = pause(buckets, State.empty(buckets), until=10.0)
    state = pause(buckets, state, until=4.0)
    assert state.paused_until == 10.0
    assert reserve(buckets, state, now=0.0)[0] == pytest.approx(10.0)


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        Bucket(rate=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        Bucket(rate=1, burst=0)


class FakeClock:
    """Time that moves only when a caller sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_local_limiter_sleeps_once_per_caller_without_polling() -> None:
    clock = FakeClock()
    limiter = LocalLimiter((Bucket(rate=4, burst=2),), clock=clock, sleep=clock.sleep)
    waits = [await limiter.acquire() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.25, 0.25, 0.25])
    assert clock.sleeps == pytest.approx([0.25, 0.25, 0.25])


async def test_local_limiter_pause_delays_the_next_caller() -> None:
    clock = FakeClock()
    limiter = LocalLimiter((Bucket(rate=4, burst=2),), clock=clock, sleep=clock.sleep)
    await limiter.pause(3.0)
    assert await limiter.acquire() == pytest.approx(3.0)
    assert clock.now == pytest.approx(103.0)


async def test_a_caller_woken_late_takes_a_new_slot_instead_of_crowding_the_next() -> None:
    clock = FakeClock()

    async def oversleep(seconds: float) -> None:
        clock.sleeps.append(seconds)
        clock.now += seconds + (0.2 if len(clock.sleeps) == 1 else 0.0)

    limiter = LocalLimiter((Bucket(rate=4, burst=1),), clock=clock, sleep=oversleep)
    await limiter.acquire()
    started = clock.now
    waited = await limiter.acquire()
    assert clock.sleeps[0] == pytest.approx(0.25)
    # Woke 0.2 s late (> half the 0.25 s interval): the next free slot was taken instead.
    assert len(clock.sleeps) == 2
    assert waited == pytest.approx(clock.now - started)
    assert clock.now - started == pytest.approx(0.5)


async def test_high_rates_still_let_callers_through_on_a_slow_clock() -> None:
    clock = FakeClock()

    async def slow_sleep(seconds: float) -> None:
        clock.sleeps.append(seconds)
        clock.now += seconds + 0.002  # every wake 2 ms late: far more than half a 10 µs interval

    limiter = LocalLimiter((Bucket(rate=100_000, burst=1),), clock=clock, sleep=slow_sleep)
    for _ in range(50):
        before = len(clock.sleeps)
        await limiter.acquire()
        assert len(clock.sleeps) - before <= 1, "at most one sleep: the slot was kept"


async def test_a_starved_process_is_let_through_after_a_few_new_slots() -> None:
    clock = FakeClock()

    class SlowStore(LocalLimiter):
        async def _reserve(self) -> tuple[float, str]:
            clock.now += 0.05  # every round trip takes 50 ms: far beyond the 10 ms allowed
            return await super()._reserve()

    limiter = SlowStore((Bucket(rate=100_000, burst=1),), clock=clock, sleep=clock.sleep)
    waited = await limiter.acquire()
    # Allowed lateness 10, 20, 40, 80 ms: the fourth slot is taken, 4 round trips later.
    assert waited == pytest.approx(0.2)
