"""Idempotency records: a command's outcome, kept under its id, so it is never worked twice.

Before working on a command the pipeline `claim`s its id: either the outcome is already
recorded (publish it again, call nothing), or another worker holds a short lease on it (wait,
then look again), or we get the lease. When the outcome is final it is `record`ed with a TTL
before the command is acked; a retriable failure `release`s the lease instead, so a later
delivery tries again.

`RedisOutcomes` is shared by every replica. `MemoryOutcomes` is for a single replica only: two
processes with their own memory would each work a command delivered to both.

The API budget is not touched here: a claim's keys and the limiter's live in different Redis
Cluster hash slots, and one script may touch only one (`service/redis_keys.py`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from service.redis_connection import RedisClient
from service.redis_keys import RedisKeys


@dataclass(frozen=True)
class Recorded:
    """The command was finished before: this is the event it produced."""

    event: bytes


@dataclass(frozen=True)
class Leased:
    """We may work on the command; pass `token` back to record or release."""

    token: str


@dataclass(frozen=True)
class Busy:
    """Another worker holds the lease for `remaining` more seconds."""

    remaining: float


Claim = Recorded | Leased | Busy


class OutcomeStore(Protocol):
    async def claim(self, command_id: str, *, fresh: bool = False) -> Claim:
        """Recorded, Busy or Leased; `fresh` ignores a recorded outcome (an operator's replay)."""
        ...

    async def record(self, command_id: str, token: str, event: bytes) -> None: ...

    async def release(self, command_id: str, token: str) -> None: ...


async def claim_when_free(
    store: OutcomeStore, command_id: str, *, fresh: bool = False
) -> Recorded | Leased:
    """Claim the id, waiting while another worker holds its lease (it ends or it expires)."""
    while True:
        claim = await store.claim(command_id, fresh=fresh)
        if not isinstance(claim, Busy):
            return claim
        await asyncio.sleep(min(max(claim.remaining, 0.05), 1.0))


class MemoryOutcomes:
    """In-process records for one replica; the oldest go first past `max_records`."""

    def __init__(
        self,
        ttl: float,
        lease: float,
        max_records: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._lease = lease
        self._max = max_records
        self._clock = clock
        self._outcomes: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._leases: dict[str, tuple[float, str]] = {}

    async def claim(self, command_id: str, *, fresh: bool = False) -> Claim:
        now = self._clock()
        outcome = self._outcomes.get(command_id)
        if outcome is not None and outcome[0] > now and not fresh:
            return Recorded(outcome[1])
        lease = self._leases.get(command_id)
        if lease is not None and lease[0] > now:
            return Busy(lease[0] - now)
        token = uuid.uuid4().hex
        self._leases[command_id] = (now + self._lease, token)
        return Leased(token)

    async def record(self, command_id: str, token: str, event: bytes) -> None:
        self._outcomes[command_id] = (self._clock() + self._ttl, event)
        self._outcomes.move_to_end(command_id)
        while len(self._outcomes) > self._max:
            self._outcomes.popitem(last=False)
        await self.release(command_id, token)

    async def release(self, command_id: str, token: str) -> None:
        lease = self._leases.get(command_id)
        if lease is not None and lease[1] == token:
            del self._leases[command_id]


# Both scripts may run twice for one call (redis-py retries a call whose answer was lost):
# a second claim finds its own lease and is leased again, a second finish changes nothing.
# KEYS: outcome, lease. ARGV: token, lease ms, fresh ('1' ignores a recorded outcome).
# Returns {'recorded', event} | {'leased'} | {'busy', pttl}.
_CLAIM = """
local event = ARGV[3] ~= '1' and redis.call('GET', KEYS[1])
if event then return {'recorded', event} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'leased'} end
if redis.call('GET', KEYS[2]) == ARGV[1] then return {'leased'} end
return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
"""
# KEYS: outcome, lease. ARGV: token, event ('' to only release), ttl ms.
_FINISH = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


class RedisOutcomes:
    """Records shared by every replica: one script call per claim and per finish, each on the
    two keys of one command, which share a Redis Cluster hash slot."""

    def __init__(self, redis: RedisClient, keys: RedisKeys, ttl: float, lease: float) -> None:
        self._keys = keys
        self._ttl_ms = str(int(ttl * 1000))
        self._lease_ms = str(int(lease * 1000))
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)

    async def claim(self, command_id: str, *, fresh: bool = False) -> Claim:
        token = uuid.uuid4().hex
        answer = await self._claim(
            keys=[self._keys.outcome(command_id), self._keys.lease(command_id)],
            args=[token, self._lease_ms, "1" if fresh else "0"],
        )
        if answer[0] == b"recorded":
            return Recorded(bytes(answer[1]))
        if answer[0] == b"leased":
            return Leased(token)
        return Busy(max(int(answer[1]), 0) / 1000)

    async def record(self, command_id: str, token: str, event: bytes) -> None:
        await self._finish(
            keys=[self._keys.outcome(command_id), self._keys.lease(command_id)],
            args=[token, event, self._ttl_ms],
        )

    async def release(self, command_id: str, token: str) -> None:
        await self._finish(
            keys=[self._keys.outcome(command_id), self._keys.lease(command_id)],
            args=[token, "", self._ttl_ms],
        )
