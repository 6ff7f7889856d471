"""Idempotency records: a command's outcome, kept under its id, so it is never worked twice, and
its request, when it is not safe to repeat, never sent twice.

Before working on a command the pipeline `claim`s its id: either the outcome is already
recorded (publish it again, call nothing), or another worker holds a lease on it (wait, then
look again), or we get the lease. A lease lives as long as its holder works: `LeaseKeeper`
renews every lease held longer than a third of its time, so only a holder that died (or lost
Redis for longer than the lease) loses it to another replica.

A request that is not safe to repeat is announced before it leaves (`mark_sent`, the recovery
point): a claim that takes over an orphan so marked and finds no outcome gets `Orphaned`, not a
plain lease, and must conclude without calling again (research.md: recovery points). When the
outcome is final it is `record`ed with a TTL before the command is acked; the first outcome
recorded stays (a replay, or a poll finishing, replaces it on purpose). A failure that proves the
request had no effect `release`s the lease and clears the mark (`unsent`), so a later delivery
tries again; any other release keeps the mark.

`RedisOutcomes` is shared by every replica. `MemoryOutcomes` is for a single replica only: two
processes with their own memory would each work a command delivered to both.

The API budget is not touched here: a claim's keys and the limiter's live in different Redis
Cluster hash slots, and one script may touch only one (`service/redis_keys.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import structlog

from service.outages import REDIS_UNAVAILABLE
from service.redis_connection import RedisClient
from service.redis_keys import RedisKeys

log = structlog.get_logger("itwin_worker.idempotency")


@dataclass(frozen=True)
class Recorded:
    """The command was finished before: this is the event it produced."""

    event: bytes


@dataclass(frozen=True)
class Leased:
    """We may work on the command; pass `token` back to mark, record or release."""

    token: str


@dataclass(frozen=True)
class Orphaned:
    """We hold the lease of a command whose earlier holder sent its request and left no
    outcome: conclude it (look the outcome up, or `OutcomeUnknown`), never send it again."""

    token: str


@dataclass(frozen=True)
class Busy:
    """Another worker holds the lease for `remaining` more seconds."""

    remaining: float


Claim = Recorded | Leased | Orphaned | Busy


class OutcomeStore(Protocol):
    lease_seconds: float

    async def claim(
        self, command_id: str, *, fresh: bool = False, unsent_token: str | None = None
    ) -> Claim:
        """Recorded, Busy, Orphaned or Leased; `fresh` (an operator's replay) ignores a
        recorded outcome and a mark of an earlier send. `unsent_token`: the token of our own
        earlier claim, let go after a failure that proved nothing was sent; it is claimed
        again (should Redis not have heard the release), and a mark it left is dropped."""
        ...

    async def mark_sent(self, command_id: str, token: str) -> bool:
        """The recovery point, just before a request that is not safe to repeat leaves; False
        when the lease is no longer ours (then it must not leave)."""
        ...

    async def renew(self, command_id: str, token: str) -> bool:
        """Extend our lease by its whole time; False when it is no longer ours."""
        ...

    async def record(
        self, command_id: str, token: str, event: bytes, *, replace: bool = False
    ) -> bytes:
        """Keep the outcome and end the lease; returns the outcome now recorded: `event`, or
        the one recorded before (unless `replace`), which stays."""
        ...

    async def release(self, command_id: str, token: str, *, unsent: bool = False) -> None:
        """End the lease without an outcome; `unsent`: what went out provably had no effect,
        so the mark of it goes too."""
        ...


_PROCESS = uuid.uuid4().hex
_NEXT = itertools.count()


def new_token() -> str:
    """A lease token no other claim has, in this process or another: a random prefix per
    process and a counter (no system call per command, as `uuid4` makes)."""
    return f"{_PROCESS}{next(_NEXT):x}"


async def claim_when_free(
    store: OutcomeStore,
    command_id: str,
    *,
    fresh: bool = False,
    unsent_token: str | None = None,
) -> Recorded | Leased | Orphaned:
    """Claim the id, waiting while another worker holds its lease (it ends or it expires)."""
    while True:
        claim = await store.claim(command_id, fresh=fresh, unsent_token=unsent_token)
        if not isinstance(claim, Busy):
            return claim
        await asyncio.sleep(min(max(claim.remaining, 0.05), 1.0))


class LeaseKeeper:
    """Renews the leases this process holds, from one task that runs while any is held.

    A lease is renewed once it is a third through its time, so a command that ends sooner (most
    do) costs no renewal; a holder that died stops renewing, and its lease ends on time.
    """

    def __init__(self, store: OutcomeStore) -> None:
        self._store = store
        self._every = store.lease_seconds / 3
        self._held: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def holding(self, command_id: str, token: str) -> Iterator[None]:
        key = (command_id, token)
        self._held[key] = time.monotonic()
        if self._task is None or self._task.done():
            # A context of its own: its log lines are not the first holder's command's.
            self._task = asyncio.get_running_loop().create_task(
                self._renew_while_held(), context=contextvars.Context()
            )
        try:
            yield
        finally:
            self.let_go(command_id, token)

    def let_go(self, command_id: str, token: str) -> None:
        """Stop renewing: the lease is being recorded or released."""
        self._held.pop((command_id, token), None)

    async def _renew_while_held(self) -> None:
        while self._held:
            await asyncio.sleep(self._every / 2)
            now = time.monotonic()
            due = [key for key, renewed in self._held.items() if now - renewed >= self._every]
            kept = await asyncio.gather(*(self._renew(*key) for key in due))
            for key, renewed in zip(due, kept, strict=True):
                if key not in self._held or renewed is None:
                    continue
                if renewed:
                    self._held[key] = time.monotonic()
                else:
                    del self._held[key]

    async def _renew(self, command_id: str, token: str) -> bool | None:
        """True renewed, False lost (another holder, or it expired), None: Redis did not
        answer (tried again next round; the lease may end meanwhile)."""
        try:
            kept = await self._store.renew(command_id, token)
        except REDIS_UNAVAILABLE:
            return None
        if not kept:
            log.warning("lease lost while the command was held", command_id=command_id)
        return kept

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class MemoryOutcomes:
    """In-process records for one replica; the oldest go first past `max_records`."""

    def __init__(
        self,
        ttl: float,
        lease: float,
        max_records: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease_seconds = lease
        self._ttl = ttl
        self._max = max_records
        self._clock = clock
        self._outcomes: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._leases: dict[str, tuple[float, str]] = {}
        self._sent: dict[str, str] = {}
        """Command id -> the token of the holder that marked its request sent."""

    async def claim(
        self, command_id: str, *, fresh: bool = False, unsent_token: str | None = None
    ) -> Claim:
        now = self._clock()
        outcome = self._outcomes.get(command_id)
        if outcome is not None and outcome[0] > now and not fresh:
            return Recorded(outcome[1])
        token = unsent_token or new_token()
        lease = self._leases.get(command_id)
        if lease is not None and lease[0] > now and lease[1] != token:
            return Busy(lease[0] - now)
        self._leases[command_id] = (now + self.lease_seconds, token)
        marked = self._sent.get(command_id)
        if fresh or (marked is not None and marked == unsent_token):
            self._sent.pop(command_id, None)
        elif marked is not None:
            return Orphaned(token)
        return Leased(token)

    def _ours(self, command_id: str, token: str) -> bool:
        lease = self._leases.get(command_id)
        return lease is not None and lease[1] == token and lease[0] > self._clock()

    async def mark_sent(self, command_id: str, token: str) -> bool:
        if not self._ours(command_id, token):
            return False
        self._sent[command_id] = token
        return True

    async def renew(self, command_id: str, token: str) -> bool:
        if not self._ours(command_id, token):
            return False
        self._leases[command_id] = (self._clock() + self.lease_seconds, token)
        return True

    async def record(
        self, command_id: str, token: str, event: bytes, *, replace: bool = False
    ) -> bytes:
        before = self._outcomes.get(command_id)
        if before is not None and before[0] > self._clock() and not replace:
            await self.release(command_id, token)
            return before[1]
        self._outcomes[command_id] = (self._clock() + self._ttl, event)
        self._outcomes.move_to_end(command_id)
        while len(self._outcomes) > self._max:
            self._outcomes.popitem(last=False)
        self._sent.pop(command_id, None)
        await self.release(command_id, token)
        return event

    async def release(self, command_id: str, token: str, *, unsent: bool = False) -> None:
        lease = self._leases.get(command_id)
        if lease is not None and lease[1] == token:
            del self._leases[command_id]
            if unsent:
                self._sent.pop(command_id, None)


# Every script may run twice for one call (redis-py retries a call whose answer was lost): a
# second claim finds its own lease and answers the same, a second mark, renewal or finish
# changes nothing more than the first (a second record finds the first's outcome: the same).
# KEYS: outcome, lease, sent. ARGV: token, lease ms, fresh ('1': ignore the outcome and the
# mark), unsent ('1': the token is ours from before, and a mark it left was not followed by a
# send). Returns {'recorded', event} | {'leased'} | {'orphaned'} | {'busy', pttl}.
_CLAIM = """
local fresh = ARGV[3] == '1'
local event = not fresh and redis.call('GET', KEYS[1])
if event then return {'recorded', event} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
    if redis.call('GET', KEYS[2]) ~= ARGV[1] then
        return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
    end
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local marked = redis.call('GET', KEYS[3])
if not marked then return {'leased'} end
if fresh or (ARGV[4] == '1' and marked == ARGV[1]) then
    redis.call('DEL', KEYS[3])
    return {'leased'}
end
return {'orphaned'}
"""
# KEYS: lease, sent. ARGV: token, mark ttl ms. Returns 1, or 0 when the lease is not ours.
_MARK_SENT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: lease. ARGV: token, lease ms. Returns 1, or 0 when the lease is not ours.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
# KEYS: outcome, lease, sent. ARGV: token, event, ttl ms, replace ('1': over an outcome
# recorded before). Returns {1} when recorded, {0, event} when an earlier outcome stays.
_RECORD = """
local mine = redis.call('GET', KEYS[2]) == ARGV[1]
if mine then redis.call('DEL', KEYS[2]) end
if ARGV[4] ~= '1' then
    local before = redis.call('GET', KEYS[1])
    if before then return {0, before} end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
return {1}
"""
# KEYS: lease, sent. ARGV: token, unsent ('1': the mark goes too).
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
return 1
"""


class RedisOutcomes:
    """Records shared by every replica: one script call per claim, mark, renewal and finish,
    each on the keys of one command, which share a Redis Cluster hash slot."""

    def __init__(self, redis: RedisClient, keys: RedisKeys, ttl: float, lease: float) -> None:
        self.lease_seconds = lease
        self._keys = keys
        self._ttl_ms = str(int(ttl * 1000))
        self._lease_ms = str(int(lease * 1000))
        self._claim = redis.register_script(_CLAIM)
        self._mark_sent = redis.register_script(_MARK_SENT)
        self._renew = redis.register_script(_RENEW)
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)

    def _all_keys(self, command_id: str) -> list[str]:
        keys = self._keys
        return [keys.outcome(command_id), keys.lease(command_id), keys.sent(command_id)]

    async def claim(
        self, command_id: str, *, fresh: bool = False, unsent_token: str | None = None
    ) -> Claim:
        token = unsent_token or new_token()
        answer = await self._claim(
            keys=self._all_keys(command_id),
            args=[token, self._lease_ms, "1" if fresh else "0", "1" if unsent_token else "0"],
        )
        kind = answer[0]
        if kind == b"recorded":
            return Recorded(bytes(answer[1]))
        if kind == b"leased":
            return Leased(token)
        if kind == b"orphaned":
            return Orphaned(token)
        return Busy(max(int(answer[1]), 0) / 1000)

    async def mark_sent(self, command_id: str, token: str) -> bool:
        keys = self._keys
        marked = await self._mark_sent(
            keys=[keys.lease(command_id), keys.sent(command_id)], args=[token, self._ttl_ms]
        )
        return bool(marked)

    async def renew(self, command_id: str, token: str) -> bool:
        renewed = await self._renew(
            keys=[self._keys.lease(command_id)], args=[token, self._lease_ms]
        )
        return bool(renewed)

    async def record(
        self, command_id: str, token: str, event: bytes, *, replace: bool = False
    ) -> bytes:
        answer = await self._record(
            keys=self._all_keys(command_id),
            args=[token, event, self._ttl_ms, "1" if replace else "0"],
        )
        return event if answer[0] == 1 else bytes(answer[1])

    async def release(self, command_id: str, token: str, *, unsent: bool = False) -> None:
        keys = self._keys
        await self._release(
            keys=[keys.lease(command_id), keys.sent(command_id)],
            args=[token, "1" if unsent else "0"],
        )
