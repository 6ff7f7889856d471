"""One API budget for every call and every replica: a token bucket kept as GCRA state.

The arithmetic is pure (`Bucket`, `reserve`, `pause`): a caller reserves the next free start
time, so callers are served in arrival order and each sleeps exactly once, with no polling.
`LocalLimiter` keeps that state in the process; `RedisLimiter` keeps it in one Redis hash,
updated by one Lua script on Redis's own clock so replicas' clock skew does not matter.

Guarantee: the start times of any sequence of reservations conform to every bucket, so in any
window of length W at most rate·W + burst calls start; with Redis, across a failover of its
master too (see `_SCRIPT`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.redis_connection import RedisClient
from service.redis_keys import RedisKeys

Sleep = Callable[[float], Awaitable[None]]
MIN_LATENESS_SECONDS = 0.01


@dataclass(frozen=True)
class Bucket:
    """A token bucket of `burst` tokens refilled at `rate` per second."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)) or self.burst < 1:
            raise ValueError("a bucket needs a positive rate and a burst of at least 1")

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    @property
    def tolerance(self) -> float:
        """How far the theoretical arrival time may run ahead of a start: the burst."""
        return (self.burst - 1) * self.interval


def buckets_for(per_second: float, burst: int, per_hour: int | None = None) -> tuple[Bucket, ...]:
    """The limiter's buckets; the hourly one spends 10 % of its budget as burst.

    rate·3600 + burst = per_hour, so no 60-minute window can exceed the hourly budget.
    """
    buckets = [Bucket(per_second, burst)]
    if per_hour is not None:
        hourly_burst = max(1, per_hour // 10)
        buckets.append(Bucket((per_hour - hourly_burst) / 3600.0, hourly_burst))
    return tuple(buckets)


@dataclass(frozen=True)
class State:
    """Theoretical arrival time per bucket, and the end of the current 429 pause."""

    tats: tuple[float, ...]
    paused_until: float = 0.0

    @classmethod
    def empty(cls, buckets: Sequence[Bucket]) -> State:
        return cls(tats=(0.0,) * len(buckets))


def reserve(buckets: Sequence[Bucket], state: State, now: float) -> tuple[float, State]:
    """Reserve the earliest start that conforms to every bucket; return it and the new state."""
    start = max(
        now, *(tat - bucket.tolerance for bucket, tat in zip(buckets, state.tats, strict=True))
    )
    tats = tuple(
        max(tat, start) + bucket.interval for bucket, tat in zip(buckets, state.tats, strict=True)
    )
    return start, State(tats, state.paused_until)


def pause(buckets: Sequence[Bucket], state: State, until: float) -> State:
    """Hold every start until `until`, and restart at the steady rate, without a burst.

    A 429 means the server's own budget is spent; a burst right after the pause would only
    earn another 429.
    """
    first, *rest = state.tats
    first = max(first, until + buckets[0].tolerance)
    return State((first, *rest), max(state.paused_until, until))


@dataclass(frozen=True)
class Reservation:
    """A start slot `wait` seconds ahead, as the store gave it.

    The round trip blurs when "now" was for the store, so both ends are kept: the caller
    sleeps from `answered` (never starting early) and is late if past `asked` + wait + lateness
    allowed (never crowding the next slot). `epoch` names the store that gave the slot (see
    `RedisLimiter`): a slot from another epoch may have been lost, and given to someone else.
    """

    asked: float
    answered: float
    wait: float
    epoch: str = ""


class Limiter(Protocol):
    """What the API client needs: wait for a token, and pause everyone after a 429."""

    async def acquire(self) -> float:
        """Wait until a call may start; return the seconds waited."""
        ...

    async def pause(self, seconds: float) -> None:
        """Hold every caller, here and in every replica sharing the budget."""
        ...


class _SleepingLimiter:
    """The waiting loop shared by both stores; subclasses provide the state operations.

    A start is only as good as its timing: a caller that wakes (or gets its answer from
    Redis) later than half an interval after its slot would crowd the callers scheduled after
    it, so it takes a new slot instead. That keeps the guarantee at the API's end, where the
    calls arrive, on a loaded machine too.

    Each new slot allows twice the lateness of the one before: a process so starved (a CPU
    limit's throttling, a debugger, valgrind) that no Redis round trip ever comes back in time
    must not re-reserve for ever. Starts then arrive up to that lateness D after their slots,
    so a window may see rate·D calls more: none while D stays under an interval.
    """

    def __init__(
        self,
        buckets: Sequence[Bucket],
        sleep: Sleep = asyncio.sleep,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._buckets = tuple(buckets)
        self._sleep = sleep
        self._timer = timer
        # Half an interval, but never below what a Redis round trip and a busy loop cost:
        # at high rates a tighter bound would never let anyone through.
        self._lateness_allowed = max(self._buckets[0].interval / 2, MIN_LATENESS_SECONDS)

    async def acquire(self) -> float:
        started = self._timer()
        allowed = self._lateness_allowed
        while True:
            asked = self._timer()
            wait, epoch = await self._reserve()
            slot = Reservation(asked, self._timer(), wait, epoch)
            if slot.wait > 0:
                await self._sleep(max(slot.answered + slot.wait - self._timer(), 0.0))
                # A 429 seen by any replica while we slept invalidates our reservation, and so
                # does a failover of the store that may have lost it.
                if not await self._holds(slot.epoch):
                    continue
            if self._timer() - (slot.asked + slot.wait) <= allowed:
                return self._timer() - started
            allowed *= 2

    async def _reserve(self) -> tuple[float, str]:
        """The next free slot: seconds until it, and the epoch of the store that gave it."""
        raise NotImplementedError

    async def _holds(self, epoch: str) -> bool:
        """No pause since, and the store is still in the epoch that gave the slot."""
        raise NotImplementedError


class LocalLimiter(_SleepingLimiter):
    """Per-process limiter: correct for one replica only."""

    def __init__(
        self,
        buckets: Sequence[Bucket],
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(buckets, sleep, clock)
        self._clock = clock
        self._state = State.empty(self._buckets)

    async def _reserve(self) -> tuple[float, str]:
        now = self._clock()
        start, self._state = reserve(self._buckets, self._state, now)
        return start - now, ""

    async def _holds(self, epoch: str) -> bool:
        return self._state.paused_until <= self._clock()

    async def pause(self, seconds: float) -> None:
        self._state = pause(self._buckets, self._state, self._clock() + seconds)


# The same arithmetic as `reserve` and `pause`, atomically on Redis's clock (now = '') or on a
# given clock (tests). Numbers go out as strings: Redis truncates Lua numbers to integers.
# KEYS: the state hash. ARGV: mode, now, pause seconds, then interval and tolerance of each
# bucket. Returns {seconds, epoch}: until the reserved slot ('reserve'), or left of the pause.
#
# The epoch is the master's replication id, which a promoted replica (Sentinel, Cluster)
# changes. Replication is asynchronous: writes of the old master's last moments may be lost,
# so slots it gave may be given again. The first reservation in a new epoch spends every
# bucket's burst (from now on, steady rates only), and a caller whose slot is of another epoch
# takes a new one. The state never expires, so a failover finds it (or finds it absent only
# if it never existed).
_SCRIPT = """
local function fmt(x) return string.format('%.6f', x) end
local key, mode = KEYS[1], ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
local epoch = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
local n = (#ARGV - 3) / 2
local fields = {'paused_until', 'epoch'}
for i = 1, n do fields[#fields + 1] = 'tat' .. i end
local stored = redis.call('HMGET', key, unpack(fields))
local paused_until = tonumber(stored[1]) or 0
if mode == 'check' then
  return {fmt(math.max(paused_until - now, 0)), epoch}
end
local tats = {}
for i = 1, n do tats[i] = tonumber(stored[i + 2]) or 0 end
if stored[2] and stored[2] ~= epoch then
  for i = 1, n do tats[i] = math.max(tats[i], now + tonumber(ARGV[3 + 2 * i])) end
end
local result
if mode == 'pause' then
  local untl = now + tonumber(ARGV[3])
  tats[1] = math.max(tats[1], untl + tonumber(ARGV[5]))
  paused_until = math.max(paused_until, untl)
  result = paused_until - now
else
  local start = now
  for i = 1, n do start = math.max(start, tats[i] - tonumber(ARGV[3 + 2 * i])) end
  for i = 1, n do tats[i] = math.max(tats[i], start) + tonumber(ARGV[2 + 2 * i]) end
  result = start - now
end
local update = {'paused_until', fmt(paused_until), 'epoch', epoch}
for i = 1, n do
  update[#update + 1] = 'tat' .. i
  update[#update + 1] = fmt(tats[i])
end
redis.call('HSET', key, unpack(update))
return {fmt(result), epoch}
"""


class RedisLimiter(_SleepingLimiter):
    """The budget shared by every replica that points at the same Redis and key prefix.

    One script call per reservation, and one more for a caller that slept (did a pause or a
    failover come meanwhile?). A call redis-py retries after a lost answer may reserve twice:
    a slot is wasted, the bound holds.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: RedisKeys,
        buckets: Sequence[Bucket],
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(buckets, sleep)
        self._key = keys.limiter
        self._script = redis.register_script(_SCRIPT)
        self._clock = clock
        self._bucket_args: list[str] = []
        for bucket in buckets:
            self._bucket_args += [repr(bucket.interval), repr(bucket.tolerance)]

    async def _run(self, mode: str, seconds: float = 0.0) -> tuple[float, str]:
        now = "" if self._clock is None else repr(self._clock())
        seconds_left, epoch = await self._script(
            keys=[self._key], args=[mode, now, repr(seconds), *self._bucket_args]
        )
        return float(seconds_left), epoch.decode()

    async def _reserve(self) -> tuple[float, str]:
        return await self._run("reserve")

    async def _holds(self, epoch: str) -> bool:
        paused, now_epoch = await self._run("check")
        return paused == 0 and now_epoch == epoch

    async def pause(self, seconds: float) -> None:
        await self._run("pause", seconds)
