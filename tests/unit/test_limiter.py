"""Token-bucket (GCRA) arithmetic: pure functions and the local limiter on a fake clock."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import random
from collections.abc import Awaitable
from dataclasses import replace

import pytest

from service.limiter import (
    POLL_RETURN_GRACE_SECONDS,
    Bucket,
    LocalLimiter,
    Priority,
    State,
    buckets_for,
    on_tick,
    pause,
    reserve,
    take,
    wake_tick,
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


def test_the_wake_tick_fits_in_the_burst_left_over() -> None:
    # The top tier: (10 - 1) / 83 s - 0.01 s = 98 ms, under the longest tick.
    assert wake_tick((Bucket(rate=83, burst=10),), lateness=0.01) == pytest.approx(9 / 83 - 0.01)
    # 500 a minute, burst 5: (5 - 1) * 0.12 s - 0.06 s is more than the longest tick.
    assert wake_tick(buckets_for(500 / 60, 5, per_hour=5000), lateness=0.06) == 0.1
    assert wake_tick((Bucket(rate=100, burst=2),), lateness=0.01) == 0.0
    assert wake_tick((Bucket(rate=3, burst=1),), lateness=0.01) == 0.0
    assert on_tick(100.25, 0.05) == pytest.approx(100.25)
    assert on_tick(100.2501, 0.05) == pytest.approx(100.3)
    assert on_tick(7.3, 0.0) == 7.3


@pytest.mark.parametrize("seed", range(30))
def test_starts_held_for_the_tick_keep_every_window(seed: int) -> None:
    rng = random.Random(seed)
    rate, burst, per_hour = rng.choice(
        [(83.0, 10, None), (20.0, 5, None), (500 / 60, 5, 5000), (100.0, 50, None), (3.0, 1, None)]
    )
    buckets = buckets_for(rate, burst, per_hour=per_hour)
    lateness = max(buckets[0].interval / 2, 0.01)
    tick = wake_tick(buckets, lateness)
    # Arrivals in clumps with idle gaps: bursts spent, backlogs, refills.
    arrivals: list[float] = []
    now = 0.0
    for _ in range(rng.randint(5, 30)):
        now += rng.choice([0.0, 0.3, 1.0, 4.0])
        arrivals += [now + rng.uniform(0, 0.5) for _ in range(rng.randint(1, 120))]
    state = State.empty(buckets)
    starts = []
    for arrival in sorted(arrivals):
        start, state = reserve(buckets, state, arrival)
        # Only a caller that waited is held. The tick leaves room for waking up to `lateness`
        # late too (with no tick, lateness is the excess the limiter's docstring accepts).
        held = on_tick(start, tick) if start > arrival else start
        starts.append(held + (rng.uniform(0, lateness) if tick else 0.0))
    for window in (0.05, 0.2, 1.0, 5.0):
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
    # Slots at 100.25, 100.5 and 100.75, each start held to the next 100 ms tick; one sleep each.
    assert waits == pytest.approx([0.0, 0.0, 0.3, 0.2, 0.3])
    assert clock.sleeps == pytest.approx([0.3, 0.2, 0.3])


async def test_callers_that_wait_wake_on_a_common_tick() -> None:
    clock = FakeClock()
    limiter = LocalLimiter((Bucket(rate=83, burst=10),), clock=clock, sleep=clock.sleep)
    for _ in range(10):
        assert await limiter.acquire() == 0.0
    woken = []
    for _ in range(8):
        await limiter.acquire()
        woken.append(clock.now)
    # Slots 12 ms apart; each start held to the next tick (98 ms here), never before its slot.
    tick = wake_tick((Bucket(rate=83, burst=10),), lateness=0.01)
    assert all(abs(moment / tick - round(moment / tick)) < 1e-6 for moment in woken)
    assert len(set(woken)) < len(woken), "some callers left on the same tick"
    slots = [100.0 + i / 83 for i in range(1, 9)]
    assert all(start >= slot - 1e-9 for start, slot in zip(woken, slots, strict=True))
    assert all(start - slot < tick for start, slot in zip(woken, slots, strict=True))


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


# Two classes in one budget: commands reserve, polls take only what is free now.


def simulate(
    buckets: tuple[Bucket, ...],
    share: float,
    commands: int,
    polls: int,
    until: float,
    lateness: float = 0.01,
) -> tuple[list[float], list[float]]:
    """`commands` callers that each reserve again as soon as their slot comes (a constant
    command backlog), and `polls` pollers that take again at once after a start and come back
    when told: the command and poll start times until `until`."""
    state = State.empty(buckets)
    events: list[tuple[float, int, str]] = [(0.0, i, "command") for i in range(commands)]
    events += [(0.0, commands + i, "poll") for i in range(polls)]
    heapq.heapify(events)
    starts: dict[str, list[float]] = {"command": [], "poll": []}
    while events:
        now, caller, kind = heapq.heappop(events)
        if now > until:
            break
        if kind == "command":
            start, state = reserve(buckets, state, now, share)
            if start > now:
                heapq.heappush(events, (start, caller, "command-start"))
                continue
            kind = "command-start"
        if kind == "command-start":
            starts["command"].append(now)
            heapq.heappush(events, (now, caller, "command"))
            continue
        wait, state = take(buckets, state, now, lateness)
        if wait == 0:
            starts["poll"].append(now)
        heapq.heappush(events, (now + wait, caller, "poll"))
    return starts["command"], starts["poll"]


def test_only_polls_use_the_whole_budget() -> None:
    _, polls = simulate((Bucket(rate=20, burst=5),), 0.1, commands=0, polls=3, until=30.0)
    assert len(polls) == pytest.approx(20 * 30 + 5, abs=2)


def test_only_commands_use_the_whole_budget_and_owe_nothing() -> None:
    commands, _ = simulate((Bucket(rate=20, burst=5),), 0.1, commands=8, polls=0, until=30.0)
    assert len(commands) == pytest.approx(20 * 30 + 5, abs=2)


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5])
def test_under_a_command_backlog_polls_keep_their_share(share: float) -> None:
    buckets = (Bucket(rate=20, burst=5),)
    commands, polls = simulate(buckets, share, commands=8, polls=2, until=60.0)
    total = len(commands) + len(polls)
    assert total <= 20 * 60 + 5
    assert total >= 20 * 60 * 0.99, "the budget is used"
    assert len(polls) / total == pytest.approx(share, abs=0.01)
    assert max(b - a for a, b in itertools.pairwise(polls)) <= 1.1 / (20 * share)


def test_without_a_share_commands_take_everything_while_they_wait() -> None:
    commands, polls = simulate((Bucket(rate=20, burst=5),), 0.0, commands=8, polls=2, until=30)
    assert polls == []
    assert len(commands) == pytest.approx(20 * 30 + 5, abs=2)


def test_a_refused_poll_holds_nothing_and_never_delays_a_command() -> None:
    buckets = (Bucket(rate=10, burst=1),)
    state = State.empty(buckets)
    starts = []
    for _ in range(3):
        start, state = reserve(buckets, state, 0.0, 0.1)
        starts.append(start)
    wait, after = take(buckets, state, 0.0, lateness=0.05)
    assert wait == pytest.approx(0.3), "back when the commands' reservations end"
    assert after.tats == state.tats, "no slot reserved for the poll"
    assert after.polls_until == pytest.approx(0.3 + POLL_RETURN_GRACE_SECONDS)
    start, _ = reserve(buckets, after, 0.0, 0.0)
    assert start == pytest.approx(0.3), "the next command goes before the waiting poll"


def test_a_poll_takes_a_slot_only_when_it_is_free_now() -> None:
    buckets = (Bucket(rate=10, burst=2),)
    state = State.empty(buckets)
    for expected in (0.0, 0.0):
        wait, state = take(buckets, state, 1.0, lateness=0.05)
        assert wait == expected, "the burst is free now"
    wait, state = take(buckets, state, 1.0, lateness=0.05)
    assert wait == pytest.approx(0.1)
    assert take(buckets, state, 1.1, lateness=0.05)[0] == 0.0


def test_holes_follow_the_commands_and_late_ones_are_dropped() -> None:
    buckets = (Bucket(rate=10, burst=1),)
    # A poll waits (it will be back by 10.5): one command in 1 / (1 - 0.5) owes a hole.
    state = replace(State.empty(buckets), polls_until=10.5)
    start, state = reserve(buckets, state, 10.0, 0.5)
    assert start == 10.0
    assert state.holes == pytest.approx((10.1,))
    start, state = reserve(buckets, state, 10.0, 0.5)
    assert start == pytest.approx(10.2), "the hole is the polls' slot"
    assert state.holes == pytest.approx((10.1, 10.3))
    assert take(buckets, state, 10.05, lateness=0.05)[0] == pytest.approx(0.05)
    wait, taken = take(buckets, state, 10.12, lateness=0.05)
    assert wait == 0.0
    assert taken.holes == pytest.approx((10.3,))
    wait, missed = take(buckets, state, 10.2, lateness=0.05)
    assert wait == pytest.approx(0.1), "the first hole is past: dropped, not taken"
    assert missed.holes == pytest.approx((10.3,))


def test_no_poll_is_owed_once_the_polls_stop_waiting() -> None:
    buckets = (Bucket(rate=10, burst=1),)
    state = replace(State.empty(buckets), polls_until=5.0)
    for _ in range(20):
        _, state = reserve(buckets, state, 6.0, 0.5)
    assert (state.holes, state.owed) == ((), 0.0)


def test_a_pause_voids_the_holes_in_it_and_holds_the_polls() -> None:
    buckets = (Bucket(rate=10, burst=1),)
    state = State(tats=(0.0,), holes=(1.0, 5.0))
    state = pause(buckets, state, until=3.0)
    assert state.holes == (5.0,)
    assert take(buckets, state, 1.0, lateness=0.05)[0] == pytest.approx(2.0)


@pytest.mark.parametrize("seed", range(10))
def test_commands_polls_and_holes_together_keep_every_window(seed: int) -> None:
    rng = random.Random(seed)
    buckets = buckets_for(20.0, 5, per_hour=2000)
    share = rng.choice([0.1, 0.3, 0.6])
    state = State.empty(buckets)
    starts: list[float] = []
    now = 0.0
    for _ in range(3000):
        now += rng.choice([0.0, 0.005, 0.02, 0.1])
        if rng.random() < 0.3:
            start, state = reserve(buckets, state, now, share)
            starts.append(start)
        else:
            holes_before = state.holes
            wait, state = take(buckets, state, now, lateness=0.025)
            if wait == 0:
                starts.append(now)
            assert len(state.holes) <= len(holes_before)
    starts += state.holes  # reserved for polls: count them as started
    for window in (1.0, 10.0, 60.0):
        assert max_in_window(starts, window) <= 20 * window + 5
    assert max_in_window(starts, 3600.0) <= 2000


async def test_polls_of_one_process_go_one_at_a_time_in_arrival_order() -> None:
    clock = FakeClock()
    limiter = LocalLimiter((Bucket(rate=4, burst=1),), clock=clock, sleep=clock.sleep)
    await limiter.acquire()  # a command spends the only token
    order: list[int] = []

    async def poll(number: int) -> None:
        await limiter.acquire("poll")
        order.append(number)

    await asyncio.gather(*(poll(number) for number in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert clock.now == pytest.approx(100.0 + 5 * 0.25)
    assert clock.sleeps == pytest.approx([0.25] * 5), "one sleep per poll: no busy asking"


class SteppedClock:
    """Time that moves to the next sleeper's wake once every task is blocked: concurrent
    callers on a fake clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), woken))
        await woken

    async def run(self, *calls: Awaitable[None]) -> None:
        tasks = [asyncio.ensure_future(call) for call in calls]
        while not all(task.done() for task in tasks):
            for _ in range(20):
                await asyncio.sleep(0)
            if self._sleepers:
                wake, _, woken = heapq.heappop(self._sleepers)
                self.now = max(self.now, wake)
                woken.set_result(None)
        for task in tasks:
            task.result()


async def test_a_command_goes_before_polls_already_waiting() -> None:
    clock = SteppedClock()
    limiter = LocalLimiter((Bucket(rate=4, burst=1),), clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    started: list[tuple[str, float]] = []

    async def call(priority: Priority, after: float = 0.0) -> None:
        if after:
            await clock.sleep(after)
        await limiter.acquire(priority)
        started.append((priority, clock.now))

    # The polls wait from 100.0; the command comes at 100.1, before the next slot.
    await clock.run(*(call("poll") for _ in range(3)), call("command", after=0.1))
    assert [kind for kind, _ in started] == ["command", "poll", "poll", "poll"]
    assert [at for _, at in started] == pytest.approx([100.25, 100.5, 100.75, 101.0])
