"""Issue 16 acceptance: one budget, commands first; job polls take what commands leave.

Two worker processes share one Redis budget (R = 20/s, B = 5) while following 150 jobs on a
0.5 s schedule: 300 polls a second wanted, 20 allowed, so the polls stretch. Meanwhile 40
commands arrive at 2/s. The simulator's request log (arrival times) is the judge.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import aio_pika
import pytest

from service.producer import Producer
from service.settings import Settings
from service.simulator import RecordedRequest, SimulatorHandle
from tests.support import REDIS_URL, SpawnWorkers, max_in_window, percentile, worker_settings

pytestmark = pytest.mark.slow

RATE, BURST = 20.0, 5
JOBS, SCHEDULE = 150, 0.5
COMMANDS, COMMAND_RATE = 40, 2.0
POLL_USE = 0.8
"""Polls must use at least this much of what the commands leave."""
POLL_EVERY = JOBS / (POLL_USE * (RATE - COMMAND_RATE)) + SCHEDULE
"""N: with the polls taking at least 80 % of the 18/s the commands leave, every job comes
round within JOBS / 14.4 s (10.4 s), plus its schedule. (Under a constant command backlog the
floor alone, POLL_MIN_SHARE 0.1 of 20/s, would bring each job round within 75 s.)"""


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


async def create_jobs(producer: Producer, count: int) -> list[str]:
    workspace = await producer.request("workspace.create", body({"name": "budget"}))
    job = {
        "type": "Full",
        "name": "j",
        "workspaceId": workspace["result"]["id"],
        "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"}],
        "settings": {"outputs": ["OBJ"]},
    }
    ids = [await producer.publish("job.create", body(job)) for _ in range(count)]
    return [(await producer.event_for(i))["result"]["id"] for i in ids]


async def forget_followed_jobs(settings: Settings) -> None:
    """Drop every poll (waiting, or parked in the delay queue): the jobs still run, and the
    session's next test must not see their polls."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(settings.delay_queue(SCHEDULE))
        poll_queue = await channel.get_queue(settings.poll_queue, ensure=True)
        await poll_queue.purge()


def progress_polls(
    sim: SimulatorHandle, requests: Sequence[RecordedRequest] | None = None
) -> dict[str, list[float]]:
    polls: dict[str, list[float]] = defaultdict(list)
    for request in sim.requests(kind="api") if requests is None else requests:
        if request.path.endswith("/progress"):
            polls[request.path.split("/")[-2]].append(request.t)
    return polls


async def test_commands_go_first_and_polls_take_what_they_leave(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_prefix: str
) -> None:
    sim.configure(time_scale=5.0)  # the simulated 60 s job takes 300 s: it outlives the test
    workers = await spawn_workers(
        2,
        rate_limit_per_second=RATE,
        rate_limit_burst=BURST,
        job_poll_schedule=[SCHEDULE],
        redis_url=REDIS_URL,
        redis_prefix=f"{redis_prefix}:{uuid.uuid4().hex}",
    )
    async with Producer(amqp_url, "itwin.commands") as producer:
        async with asyncio.timeout(90):
            job_ids = await create_jobs(producer, JOBS)
            submits = [await producer.publish("job.submit", body({"jobId": j})) for j in job_ids]
            for command_id in submits:
                assert (await producer.event_for(command_id))["type"] == "job.submitted"
            while len(progress_polls(sim)) < JOBS:  # every job followed: polls in full swing
                await asyncio.sleep(0.5)
        # One job.get for each of 40 followed jobs, at 2/s: its path names its call.
        published: dict[str, float] = {}
        command_ids = []
        start = time.time()
        for k, job_id in enumerate(job_ids[:COMMANDS]):
            await asyncio.sleep(max(start + k / COMMAND_RATE - time.time(), 0.0))
            published[job_id] = time.time()
            command_ids.append(await producer.publish("job.get", body({"jobId": job_id})))
        end = start + COMMANDS / COMMAND_RATE
        await asyncio.sleep(max(end - time.time(), 0.0))
        async with asyncio.timeout(30):
            events = [await producer.event_for(command_id) for command_id in command_ids]
    requests = sim.requests(kind="api")
    for worker in workers:
        worker.stop()  # the polls they held go back to the queue, to be dropped
    await forget_followed_jobs(worker_settings(amqp_url, sim, job_poll_schedule=[SCHEDULE]))
    assert {event["type"] for event in events} == {"job.retrieved"}

    called = {
        r.path.split("/")[-1]: r.t
        for r in reversed(requests)
        if r.method == "GET" and r.path.split("/")[-1] in published and r.t >= start
    }
    waits = [called[job_id] - at for job_id, at in published.items()]
    assert percentile(waits, 0.95) <= 0.5, sorted(waits)

    arrivals = [r.t for r in requests]
    for window in (1.0, 5.0):
        assert max_in_window(arrivals, window) <= RATE * window + BURST

    during = [r for r in requests if start <= r.t < end]
    command_calls = sum(1 for r in during if not r.path.endswith("/progress"))
    poll_calls = len(during) - command_calls
    left = RATE * (end - start) - command_calls
    assert poll_calls >= POLL_USE * left, (poll_calls, left)

    for job_id, times in progress_polls(sim, requests).items():
        seen = [t for t in times if start <= t < end]
        gaps = [b - a for a, b in itertools.pairwise([start, *seen, end])]
        assert max(gaps) <= POLL_EVERY, (job_id, max(gaps))
