"""A circuit breaker in front of the API and one in front of the token endpoint.

After `failures` retriable failures in a row (connect errors, timeouts, 5xx; never a 429, which
the limiter's shared pause handles) the breaker opens: no call goes out except one probe at a
time, the first `initial` seconds after opening, then at an interval that doubles with each
failed probe up to `maximum`. The first success, probe or not, closes it. Callers that meet an
open breaker get `DependencyDown`; the pipeline then holds their delivery unacked until the
breaker closes or its next probe is due (`wait`), so commands wait in their queues and spend
none of their retries, delays or deliveries.

The arithmetic is pure (`BreakerState`, `admit`, `succeeded`, `failed`); `LocalBreaker` keeps
the state in the process, `RedisBreaker` in one Redis hash per breaker, updated by one Lua
script on Redis's clock, so every replica sees the same state and one replica probes for all.

Why not a library (searched; none is in the locks): pybreaker's Redis storage is blocking
redis-py; purgatory (asyncio, a Redis unit of work) shares the state but, as we read it, not one
atomic "this caller is the probe" across replicas, nor 5xx-yes/429-no classification of its own;
aiobreaker-redis and asyncbreaker are new single-maintainer 0.x packages. What the worker needs
(one probe for every replica, on Redis's clock, hash-tagged for Cluster) is one Lua script over
a few pure functions, unit-tested with an injected clock (tests/unit/test_breaker.py).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import structlog

from service.metrics import Metrics
from service.outages import DependencyDown
from service.redis_connection import RedisClient

log = structlog.get_logger("itwin_worker.breaker")

Verdict = Literal["closed", "probe", "open"]


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5
    """Retriable failures in a row that open the breaker."""
    initial: float = 1.0
    """Seconds from opening to the first probe."""
    maximum: float = 10.0
    """Longest interval between probes (each failed probe doubles it up to this)."""
    probe_lease: float = 35.0
    """How long a probe that never reports (its process died) keeps others from probing."""
    closed_recheck: float = 1.0
    """How long a breaker this process saw closed, with no failure of its own since, admits
    without asking the store: one store call a second instead of one per call, at the price of
    learning another replica's opening up to this much later (its own failures tell sooner)."""


@dataclass(frozen=True)
class BreakerState:
    failures: int = 0
    """Failures in a row while closed."""
    open: bool = False
    interval: float = 0.0
    """The wait after the last failed probe (or the opening)."""
    next_probe: float = 0.0
    prober: str = ""
    """Who holds the current probe (a second ask of theirs gets it again)."""


def admit(
    policy: BreakerPolicy, state: BreakerState, now: float, caller: str
) -> tuple[Verdict, float, BreakerState]:
    """May `caller` call now? closed: yes; probe: yes, as the one probe; open: no, for the
    returned seconds at least."""
    if not state.open:
        return "closed", 0.0, state
    if state.prober == caller:
        return "probe", 0.0, state
    if now < state.next_probe:
        return "open", state.next_probe - now, state
    lease = now + max(state.interval, policy.probe_lease)
    return "probe", 0.0, replace(state, next_probe=lease, prober=caller)


def succeeded() -> BreakerState:
    return BreakerState()


def failed(policy: BreakerPolicy, state: BreakerState, now: float, probe: bool) -> BreakerState:
    """A retriable failure. While open only a probe's failure counts (calls that left before
    the opening fail too, and are not news)."""
    if state.open:
        if not probe:
            return state
        interval = min(policy.maximum, state.interval * 2)
        return BreakerState(state.failures, True, interval, now + interval)
    failures = state.failures + 1
    if failures < policy.failures:
        return replace(state, failures=failures)
    return BreakerState(failures, True, policy.initial, now + policy.initial)


@dataclass(frozen=True)
class Permit:
    """What a caller got from `Breaker.admit`: pass it back with the call's result."""

    caller: str
    probe: bool


_SEEN_CLOSED = Permit("", probe=False)
"""The permit of a breaker this process saw closed a moment ago (no store call)."""


class Breaker:
    """The behaviour shared by both stores; subclasses run the state operations."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy
        self._metrics = metrics
        self._clock = clock
        self.is_open = False
        """As this process last saw it."""
        self._failures_seen = False
        self._closed_until = float("-inf")
        """Until when this process admits without asking (it saw the breaker closed)."""
        metrics.dependency_down.labels(name).set(0)

    async def admit(self) -> Permit:
        """A permit to call, or `DependencyDown` while the breaker is open."""
        if not self._failures_seen and self._clock() < self._closed_until:
            return _SEEN_CLOSED
        caller = uuid.uuid4().hex
        verdict, _ = await self._run("admit", caller)
        if verdict == "open":
            raise DependencyDown(self.name)
        if verdict == "closed":
            self._closed_until = self._clock() + self.policy.closed_recheck
        return Permit(caller, probe=verdict == "probe")

    async def succeeded(self, permit: Permit) -> None:
        # A healthy closed breaker costs no store call per success; only one that has seen
        # failures (or is open) needs its run reset.
        if not (self.is_open or self._failures_seen or permit.probe):
            return
        await self._run("success", permit.caller)
        self._failures_seen = False

    async def failed(self, permit: Permit) -> bool:
        """Count a retriable failure; True if the breaker is open now."""
        self._failures_seen = True
        self._closed_until = float("-inf")
        verdict, _ = await self._run("failure", permit.caller, probe=permit.probe)
        return verdict == "open"

    async def check(self) -> bool:
        """Open now? (for `/readyz`; takes no probe)."""
        verdict, _ = await self._run("check", "")
        return verdict == "open"

    async def wait(self) -> None:
        """Return once the breaker is closed or a probe is due (a caller then tries, and one
        of them gets the probe). A caller sent here by a closed breaker (a failure short of
        the run that opens it) waits a moment first, so that it does not spin."""
        first = True
        while True:
            verdict, seconds = await self._run("check", "")
            if verdict == "closed" and first:
                await asyncio.sleep(random.uniform(0.1, 0.3))
                return
            if verdict == "closed" or seconds <= 0:
                return
            first = False
            # Spread the waiters over a little time, and look again at least every second
            # (another replica's probe may close it meanwhile).
            await asyncio.sleep(min(seconds, 1.0) * random.uniform(0.8, 1.0))

    async def _run(self, mode: str, caller: str, *, probe: bool = False) -> tuple[Verdict, float]:
        verdict, seconds = await self._operate(mode, caller, probe)
        self._saw(closed=verdict == "closed")
        return verdict, seconds

    def _saw(self, closed: bool) -> None:
        if closed and self.is_open:
            log.info("circuit breaker closed: calls resume", breaker=self.name)
        elif not closed and not self.is_open:
            log.error("circuit breaker open: commands wait in their queues", breaker=self.name)
        self.is_open = not closed
        self._metrics.dependency_down.labels(self.name).set(0 if closed else 1)

    async def _operate(self, mode: str, caller: str, probe: bool) -> tuple[Verdict, float]:
        raise NotImplementedError


class LocalBreaker(Breaker):
    """Per-process state: each replica opens, probes and closes on its own."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, policy, metrics, clock)
        self.state = BreakerState()

    async def _operate(self, mode: str, caller: str, probe: bool) -> tuple[Verdict, float]:
        now, state = self._clock(), self.state
        if mode == "admit":
            verdict, seconds, self.state = admit(self.policy, state, now, caller)
            return verdict, seconds
        if mode == "success":
            self.state = succeeded()
        elif mode == "failure":
            self.state = failed(self.policy, state, now, probe)
        if not self.state.open:
            return "closed", 0.0
        return "open", max(self.state.next_probe - now, 0.0)


# `admit`, `succeeded` and `failed` above, atomically on Redis's clock. Run twice by redis-py
# after a lost answer: a second admit of the same caller gets its probe again, a second success
# changes nothing, a second failure of a probe doubles the interval once more (a longer wait).
# A closed breaker's run of failures expires after a minute without failures.
# KEYS: the breaker hash. ARGV: mode, caller, probe ('1'), failures, initial, maximum, lease.
# Returns {verdict, seconds until the next probe}.
_SCRIPT = """
local function fmt(x) return string.format('%.6f', x) end
local key, mode, caller = KEYS[1], ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', key, 'failures', 'open', 'interval', 'next_probe', 'prober')
local failures = tonumber(s[1]) or 0
local open = s[2] == '1'
local interval = tonumber(s[3]) or 0
local next_probe = tonumber(s[4]) or 0
if mode == 'success' then
  redis.call('DEL', key)
  return {'closed', '0'}
end
if mode == 'failure' then
  if open then
    if ARGV[3] == '1' then
      interval = math.min(tonumber(ARGV[6]), interval * 2)
      next_probe = now + interval
      redis.call('HSET', key, 'interval', fmt(interval), 'next_probe', fmt(next_probe),
        'prober', '')
    end
  else
    failures = failures + 1
    if failures < tonumber(ARGV[4]) then
      redis.call('HSET', key, 'failures', failures)
      redis.call('PEXPIRE', key, 60000)
      return {'closed', '0'}
    end
    interval = tonumber(ARGV[5])
    next_probe = now + interval
    redis.call('HSET', key, 'failures', failures, 'open', '1', 'interval', fmt(interval),
      'next_probe', fmt(next_probe), 'prober', '')
    redis.call('PERSIST', key)
  end
  return {'open', fmt(math.max(next_probe - now, 0))}
end
if not open then return {'closed', '0'} end
if mode == 'admit' then
  if s[5] == caller then return {'probe', '0'} end
  if now >= next_probe then
    local lease = now + math.max(interval, tonumber(ARGV[7]))
    redis.call('HSET', key, 'next_probe', fmt(lease), 'prober', caller)
    return {'probe', '0'}
  end
end
return {'open', fmt(math.max(next_probe - now, 0))}
"""


class RedisBreaker(Breaker):
    """One state for every replica sharing the Redis and the key prefix."""

    def __init__(
        self, name: str, policy: BreakerPolicy, metrics: Metrics, redis: RedisClient, key: str
    ) -> None:
        super().__init__(name, policy, metrics)
        self._key = key
        self._script = redis.register_script(_SCRIPT)
        self._args = [
            str(policy.failures),
            repr(policy.initial),
            repr(policy.maximum),
            repr(policy.probe_lease),
        ]

    async def _operate(self, mode: str, caller: str, probe: bool) -> tuple[Verdict, float]:
        verdict, seconds = await self._script(
            keys=[self._key], args=[mode, caller, "1" if probe else "0", *self._args]
        )
        decoded = verdict.decode()
        assert decoded in ("closed", "probe", "open")
        return decoded, float(seconds)
