"""One API budget for every call and every replica: a token bucket kept as GCRA state.

Two classes of callers share it (docs/budget.md). A *command* (someone is waiting for it)
reserves the next free start time, so commands are served in arrival order and each sleeps
exactly once. A *job poll* (background) never reserves ahead: it takes a slot only when one is
free now, that is when no command has reserved it (`take`). Waiting commands are therefore
their reservations, already in the state; no count of them is needed.

So that a constant command backlog cannot stop the polls, commands leave the polls a share:
while a poll is waiting (it left word when it will be back: `polls_until`), every command
reservation owes share/(1 - share) of a slot, and each whole slot owed is reserved right
behind the command as a *hole* that only a poll may take. Holes are reservations like any
other, so the bound below covers them.

The arithmetic is pure (`Bucket`, `reserve`, `take`, `pause`). `LocalLimiter` keeps the state
in the process; `RedisLimiter` keeps it in one Redis hash, updated by one Lua script on Redis's
own clock so replicas' clock skew does not matter.

Guarantee: the start times of every reservation, hole and poll conform to every bucket, so in
any window of length W at most rate·W + burst calls start; with Redis, across a failover of
its master too (see `_SCRIPT`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from service.redis_connection import RedisClient
from service.redis_keys import RedisKeys

Sleep = Callable[[float], Awaitable[None]]
Priority = Literal["command", "poll"]
"""The class of a call: `command` (someone waits for it) goes before `poll` (background)."""
PRIORITIES: tuple[Priority, ...] = ("command", "poll")
MIN_LATENESS_SECONDS = 0.01
MAX_TICK_SECONDS = 0.1
"""The longest a waiting command's start is held for its neighbours (`wake_tick`): at the top
tier's budget 50 -> 100 ms cut the worker's CPU per command by 13 % (bench/README.md)."""
NO_WAIT_SECONDS = 1e-6
"""A wait shorter than this is none: the float arithmetic's noise (a burst's last slot comes
out 4e-14 s ahead), below the store's six decimals. Held to the tick, it would wait for nothing."""
POLL_RETURN_GRACE_SECONDS = 0.5
"""How long past its announced return a refused poll still counts as waiting."""
_WHOLE = 1 - 1e-5
"""A slot owed counts as whole from here: owed shares are sums of floats (and of Redis's
six-decimal strings)."""


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
    """Theoretical arrival time per bucket, the end of the current 429 pause, and the polls'
    share: holes kept for them, the fraction of a slot owed to them, and until when a poll
    said it would be back."""

    tats: tuple[float, ...]
    paused_until: float = 0.0
    holes: tuple[float, ...] = ()
    owed: float = 0.0
    polls_until: float = 0.0

    @classmethod
    def empty(cls, buckets: Sequence[Bucket]) -> State:
        return cls(tats=(0.0,) * len(buckets))


def _earliest(buckets: Sequence[Bucket], tats: tuple[float, ...], now: float) -> float:
    return max(now, *(tat - bucket.tolerance for bucket, tat in zip(buckets, tats, strict=True)))


def _advance(buckets: Sequence[Bucket], tats: tuple[float, ...], start: float) -> tuple[float, ...]:
    return tuple(
        max(tat, start) + bucket.interval for bucket, tat in zip(buckets, tats, strict=True)
    )


def reserve(
    buckets: Sequence[Bucket], state: State, now: float, poll_share: float = 0.0
) -> tuple[float, State]:
    """Reserve a command the earliest start that conforms to every bucket; return it and the
    new state. While a poll waits, also reserve the holes the polls' share calls for."""
    start = _earliest(buckets, state.tats, now)
    tats = _advance(buckets, state.tats, start)
    holes, owed = state.holes, 0.0
    if poll_share > 0 and state.polls_until > now:
        owed = state.owed + poll_share / (1 - poll_share)
        while owed >= _WHOLE:
            hole = _earliest(buckets, tats, now)
            tats = _advance(buckets, tats, hole)
            holes, owed = (*holes, hole), owed - 1
    return start, State(tats, state.paused_until, holes, owed, state.polls_until)


def take(
    buckets: Sequence[Bucket], state: State, now: float, lateness: float
) -> tuple[float, State]:
    """A poll's try: 0 when it may start now (a hole due, or a slot nobody reserved), else the
    seconds until it should try again. Never a reservation: a refused poll holds nothing, and
    leaves word that it will be back, so that commands leave it its share meanwhile.

    A hole more than `lateness` past its time is dropped: taken now, it would crowd the slots
    after it (as a command woken that late takes a new slot).
    """
    holes = tuple(hole for hole in state.holes if hole >= now - lateness)
    if state.paused_until <= now:
        due = [hole for hole in holes if hole <= now]
        if due:
            left = list(holes)
            left.remove(min(due))
            return 0.0, State(state.tats, state.paused_until, tuple(left), state.owed,
                              state.polls_until)  # fmt: skip
        start = _earliest(buckets, state.tats, now)
        if start <= now:
            tats = _advance(buckets, state.tats, now)
            return 0.0, State(tats, state.paused_until, holes, state.owed, state.polls_until)
        back = min((start, *holes))
    else:
        back = state.paused_until
    polls_until = max(state.polls_until, back + POLL_RETURN_GRACE_SECONDS)
    return back - now, State(state.tats, state.paused_until, holes, state.owed, polls_until)


def pause(buckets: Sequence[Bucket], state: State, until: float) -> State:
    """Hold every start until `until`, and restart at the steady rate, without a burst.

    A 429 means the server's own budget is spent; a burst right after the pause would only
    earn another 429. Holes inside the pause are void, as reservations there are.
    """
    first, *rest = state.tats
    first = max(first, until + buckets[0].tolerance)
    holes = tuple(hole for hole in state.holes if hole >= until)
    return State(
        (first, *rest), max(state.paused_until, until), holes, state.owed, state.polls_until
    )


def wake_tick(buckets: Sequence[Bucket], lateness: float) -> float:
    """The tick on which callers that had to wait wake, so that a few commands leave together
    and the event loop wakes once for them, not once per slot: at the top tier's budget this
    cut the worker's CPU per command by about a quarter (bench/README.md). 0: every caller wakes
    on its own slot.

    A caller holds its start past its slot by less than the tick plus the lateness allowed.
    Only a caller that waited is held. When the first bucket made it wait, that bucket was empty
    after its slot, so a window a held start slides into sees at most 1 + rate * (window + hold)
    starts: within burst + rate * window while rate * hold is at most burst - 1. When a pause or
    a slower bucket made it wait, starts are that far apart anyway. Bursts of 1 (nothing to
    spare) get no tick.
    """
    first = buckets[0]
    spare = (first.burst - 1) * first.interval - lateness
    return max(0.0, min(MAX_TICK_SECONDS, spare))


def on_tick(moment: float, tick: float) -> float:
    """The first tick at or after `moment` (a moment already on a tick stays)."""
    if tick <= 0:
        return moment
    return math.ceil(moment / tick - 1e-9) * tick


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

    async def acquire(self, priority: Priority = "command") -> float:
        """Wait until a call of this class may start; return the seconds waited."""
        ...

    async def pause(self, seconds: float) -> None:
        """Hold every caller, here and in every replica sharing the budget."""
        ...


class _SleepingLimiter:
    """The waiting loops shared by both stores; subclasses provide the state operations.

    A command's start is only as good as its timing: a caller that wakes (or gets its answer
    from Redis) later than half an interval after its slot would crowd the callers scheduled
    after it, so it takes a new slot instead. That keeps the guarantee at the API's end, where
    the calls arrive, on a loaded machine too.

    Each new slot allows twice the lateness of the one before: a process so starved (a CPU
    limit's throttling, a debugger, valgrind) that no Redis round trip ever comes back in time
    must not re-reserve for ever. Starts then arrive up to that lateness D after their slots,
    so a window may see rate·D calls more: none while D stays under an interval.

    Polls of one process ask the store one at a time, in arrival order (`asyncio.Lock` wakes
    its waiters first come, first served): the poll queue delivers polls oldest-due first, so
    the oldest-due poll here goes first, and the store sees one poll per process, not one per
    poll in flight. A refused poll sleeps until the store says a slot or a hole may be free:
    holes are only ever added behind that time, so none is missed by sleeping.
    """

    def __init__(
        self,
        buckets: Sequence[Bucket],
        sleep: Sleep = asyncio.sleep,
        timer: Callable[[], float] = time.monotonic,
        poll_share: float = 0.0,
    ) -> None:
        if not 0 <= poll_share < 1:
            raise ValueError("the polls' share of the budget is at least 0 and below 1")
        self._buckets = tuple(buckets)
        self._sleep = sleep
        self._timer = timer
        self._poll_share = poll_share
        self._polls = asyncio.Lock()
        # Half an interval, but never below what a Redis round trip and a busy loop cost:
        # at high rates a tighter bound would never let anyone through.
        self._lateness_allowed = max(self._buckets[0].interval / 2, MIN_LATENESS_SECONDS)
        self._tick = wake_tick(self._buckets, self._lateness_allowed)

    async def acquire(self, priority: Priority = "command") -> float:
        started = self._timer()
        if priority == "poll":
            async with self._polls:
                while (wait := await self._take()) is not None:
                    await self._sleep(wait)
            return self._timer() - started
        allowed = self._lateness_allowed
        while True:
            asked = self._timer()
            wait, epoch = await self._reserve()
            slot = Reservation(asked, self._timer(), wait, epoch)
            held = 0.0
            if slot.wait > NO_WAIT_SECONDS:
                due = slot.answered + slot.wait
                woken = on_tick(due, self._tick)
                held = woken - due
                await self._sleep(max(woken - self._timer(), 0.0))
                # A 429 seen by any replica while we slept invalidates our reservation, and so
                # does a failover of the store that may have lost it.
                if not await self._holds(slot):
                    continue
            if self._timer() - (slot.asked + slot.wait + held) <= allowed:
                return self._timer() - started
            allowed *= 2

    async def _reserve(self) -> tuple[float, str]:
        """The next free slot: seconds until it, and the epoch of the store that gave it."""
        raise NotImplementedError

    async def _take(self) -> float | None:
        """A poll's slot now (None), or the seconds until it should ask again."""
        raise NotImplementedError

    async def _holds(self, slot: Reservation) -> bool:
        """No pause since, and the store is still in the epoch that gave the slot."""
        raise NotImplementedError


class LocalLimiter(_SleepingLimiter):
    """Per-process limiter: correct for one replica only."""

    def __init__(
        self,
        buckets: Sequence[Bucket],
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        *,
        poll_share: float = 0.0,
    ) -> None:
        super().__init__(buckets, sleep, clock, poll_share)
        self._clock = clock
        self._state = State.empty(self._buckets)

    async def _reserve(self) -> tuple[float, str]:
        now = self._clock()
        start, self._state = reserve(self._buckets, self._state, now, self._poll_share)
        return start - now, ""

    async def _take(self) -> float | None:
        wait, self._state = take(self._buckets, self._state, self._clock(), self._lateness_allowed)
        return wait or None

    async def _holds(self, slot: Reservation) -> bool:
        return self._state.paused_until <= self._clock()

    async def pause(self, seconds: float) -> None:
        self._state = pause(self._buckets, self._state, self._clock() + seconds)


# The same arithmetic as `reserve`, `take` and `pause`, atomically on Redis's clock (now = '')
# or on a given clock (tests). Numbers go out as strings: Redis truncates Lua numbers to
# integers; the share owed goes out exact (17 digits), as its sums drift otherwise. KEYS: the
# state hash. ARGV: mode, now, pause seconds, slots owed to the polls per command
# (share / (1 - share)), a hole's lateness allowed, the polls' return grace, then interval and
# tolerance of each bucket. Returns {seconds, epoch, 'go' | 'wait', pause}: until the
# reserved slot ('reserve'), until a poll asks again ('take', 'wait'), or left of the pause;
# and, whatever the mode, the seconds left of the pause in force.
# The holes are one field, their times separated by spaces: at most a share of the commands
# in flight, so a few dozen.
#
# The epoch is the master's replication id, which a promoted replica (Sentinel, Cluster)
# changes. Replication is asynchronous: writes of the old master's last moments may be lost,
# so slots it gave may be given again. The first reservation in a new epoch spends every
# bucket's burst (from now on, steady rates only) and drops the holes, and a caller whose slot
# is of another epoch takes a new one. The state never expires, so a failover finds it (or
# finds it absent only if it never existed).
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
local n = (#ARGV - 6) / 2
local function interval(i) return tonumber(ARGV[5 + 2 * i]) end
local function tolerance(i) return tonumber(ARGV[6 + 2 * i]) end
local fields = {'paused_until', 'epoch', 'owed', 'polls_until', 'holes'}
for i = 1, n do fields[#fields + 1] = 'tat' .. i end
local stored = redis.call('HMGET', key, unpack(fields))
local paused_until = tonumber(stored[1]) or 0
if mode == 'check' then
  local left = fmt(math.max(paused_until - now, 0))
  return {left, epoch, 'go', left}
end
local owed = tonumber(stored[3]) or 0
local polls_until = tonumber(stored[4]) or 0
local tats, holes = {}, {}
for i = 1, n do tats[i] = tonumber(stored[i + 5]) or 0 end
if stored[2] and stored[2] ~= epoch then
  for i = 1, n do tats[i] = math.max(tats[i], now + tolerance(i)) end
else
  for hole in string.gmatch(stored[5] or '', '%S+') do holes[#holes + 1] = tonumber(hole) end
end
local function earliest()
  local start = now
  for i = 1, n do start = math.max(start, tats[i] - tolerance(i)) end
  return start
end
local function advance(start)
  for i = 1, n do tats[i] = math.max(tats[i], start) + interval(i) end
end
local function keep(from)
  local kept = {}
  for _, hole in ipairs(holes) do
    if hole >= from then kept[#kept + 1] = hole end
  end
  holes = kept
end
local result, status = 0, 'go'
if mode == 'pause' then
  local untl = now + tonumber(ARGV[3])
  tats[1] = math.max(tats[1], untl + tolerance(1))
  paused_until = math.max(paused_until, untl)
  keep(untl)
  result = paused_until - now
elseif mode == 'take' then
  keep(now - tonumber(ARGV[5]))
  local back
  if paused_until <= now then
    local due
    for k, hole in ipairs(holes) do
      if hole <= now and (due == nil or hole < holes[due]) then due = k end
    end
    if due then
      table.remove(holes, due)
    else
      local start = earliest()
      if start <= now then
        advance(now)
      else
        back = start
        for _, hole in ipairs(holes) do back = math.min(back, hole) end
      end
    end
  else
    back = paused_until
  end
  if back then
    polls_until = math.max(polls_until, back + tonumber(ARGV[6]))
    result, status = back - now, 'wait'
  end
else
  local start = earliest()
  advance(start)
  local share = tonumber(ARGV[4])
  if share > 0 and polls_until > now then
    owed = owed + share
    while owed >= 1 - 1e-5 do
      local hole = earliest()
      advance(hole)
      holes[#holes + 1] = hole
      owed = owed - 1
    end
  else
    owed = 0
  end
  result = start - now
end
local listed = {}
for k, hole in ipairs(holes) do listed[k] = fmt(hole) end
local update = {'paused_until', fmt(paused_until), 'epoch', epoch,
                'owed', string.format('%.17g', owed), 'polls_until', fmt(polls_until),
                'holes', table.concat(listed, ' ')}
for i = 1, n do
  update[#update + 1] = 'tat' .. i
  update[#update + 1] = fmt(tats[i])
end
redis.call('HSET', key, unpack(update))
return {fmt(result), epoch, status, fmt(math.max(paused_until - now, 0))}
"""


@dataclass(frozen=True)
class Seen:
    """What the newest answer of the store said (this process's clock): when it came, when the
    pause then in force ends, and the store's epoch."""

    answered: float
    pause_ends: float
    epoch: str


SEEN_FRESH_SECONDS = 0.05
"""How old the newest answer may be to stand for the store's state when a sleeper wakes."""


def _retrieved(call: asyncio.Future[Any]) -> None:
    if not call.cancelled():
        call.exception()


class RedisLimiter(_SleepingLimiter):
    """The budget shared by every replica that points at the same Redis and key prefix.

    One script call per reservation; one per try of a poll. A caller that slept must know that
    no pause (a 429 any replica saw) and no failover came meanwhile: every answer says both, so
    when this process's newest answer is at most `SEEN_FRESH_SECONDS` old (under load it is a
    few milliseconds: reservations come all the time) it stands for the store, else one more
    call asks, one for all the sleepers waking on the same tick. A pause recorded in that last
    instant is met as a 429, which pauses again. A call redis-py retries after a lost answer
    may reserve (or take) twice: a slot is wasted, the bound holds.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: RedisKeys,
        buckets: Sequence[Bucket],
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] | None = None,
        *,
        poll_share: float = 0.0,
    ) -> None:
        super().__init__(buckets, sleep, poll_share=poll_share)
        self._key = keys.limiter
        self._script = redis.register_script(_SCRIPT)
        self._clock = clock
        self._seen = Seen(float("-inf"), float("inf"), "")
        self._check: asyncio.Future[tuple[float, str, bool]] | None = None
        self._check_asked = float("-inf")
        self._policy_args = [
            repr(poll_share / (1 - poll_share)),
            repr(self._lateness_allowed),
            repr(POLL_RETURN_GRACE_SECONDS),
        ]
        for bucket in buckets:
            self._policy_args += [repr(bucket.interval), repr(bucket.tolerance)]

    async def _run(self, mode: str, seconds: float = 0.0) -> tuple[float, str, bool]:
        now = "" if self._clock is None else repr(self._clock())
        seconds_left, epoch, status, pause = await self._script(
            keys=[self._key], args=[mode, now, repr(seconds), *self._policy_args]
        )
        answered = self._timer()
        if answered >= self._seen.answered:
            self._seen = Seen(answered, answered + float(pause), epoch.decode())
        return float(seconds_left), epoch.decode(), status == b"go"

    async def _reserve(self) -> tuple[float, str]:
        wait, epoch, _ = await self._run("reserve")
        return wait, epoch

    async def _take(self) -> float | None:
        wait, _, go = await self._run("take")
        return None if go else wait

    async def _holds(self, slot: Reservation) -> bool:
        if self._timer() - self._seen.answered > SEEN_FRESH_SECONDS:
            await self._checked_since(slot.answered + slot.wait)
        seen = self._seen
        return seen.epoch == slot.epoch and seen.pause_ends <= self._timer()

    async def _checked_since(self, due: float) -> None:
        """An answer of the store asked for at or after `due`: the sleepers waking on one tick
        share one call (with a 100 ms tick and the API answering at once, each asking for its
        own made 5.0 round trips per command instead of 4.1). A call asked for before `due`
        could predate a pause this sleeper must see: it is not shared."""
        check = self._check
        if check is None or check.done() or self._check_asked < due:
            self._check_asked = self._timer()
            check = self._check = asyncio.ensure_future(self._run("check"))
            # Every sleeper sharing it may be cancelled: its error is then nobody's to raise.
            check.add_done_callback(_retrieved)
        # A cancelled sleeper leaves the call to the others.
        await asyncio.shield(check)

    async def pause(self, seconds: float) -> None:
        await self._run("pause", seconds)
