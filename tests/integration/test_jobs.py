"""Issue 7 acceptance: submit, follow and cancel ContextCapture jobs, with progress events.

The simulator runs jobs on a compressed clock; the worker polls on a compressed schedule.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import Counter, defaultdict
from typing import Any

import pytest

from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import (
    REDIS_URL,
    StartWorker,
    WorkerProcess,
    worker_settings,
)

pytestmark = pytest.mark.slow

SCHEDULE = [0.2, 0.4, 0.8]
TERMINAL = {"job.succeeded", "job.failed", "job.cancelled"}


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


async def create_jobs(producer: Producer, count: int) -> list[str]:
    async with asyncio.timeout(30):
        workspace = await producer.request("workspace.create", body({"name": "jobs"}))
        job = {
            "type": "Full",
            "name": "j",
            "workspaceId": workspace["result"]["id"],
            "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"}],
            "settings": {"outputs": ["OBJ"]},
        }
        ids = [await producer.publish("job.create", body(job)) for _ in range(count)]
        return [(await producer.event_for(i))["result"]["id"] for i in ids]


async def events_until_terminal(
    producer: Producer, command_id: str, within: float = 30
) -> list[dict[str, Any]]:
    async with asyncio.timeout(within):
        while not any(
            e["commandId"] == command_id and e["type"] in TERMINAL for e in producer.events
        ):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything after the terminal event would be a bug
    return [e for e in producer.events if e["commandId"] == command_id]


async def test_submitted_job_is_followed_to_one_terminal_event(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    sim.configure(time_scale=0.05)  # the simulated 60 s job takes 3 s
    async with Producer(amqp_url, "itwin.commands") as producer:
        [job_id] = await create_jobs(producer, 1)
        command_id = await producer.publish("job.submit", body({"jobId": job_id}))
        events = await events_until_terminal(producer, command_id)
    types = [e["type"] for e in events]
    assert types[0] == "job.submitted"
    assert types[-1] == "job.succeeded"
    assert types.count("job.succeeded") == 1
    progress = [e["result"] for e in events if e["type"] == "job.progress"]
    assert len(progress) >= 3
    assert all(p["jobId"] == job_id for p in progress)
    percentages = [p["percentage"] for p in progress]
    assert percentages == sorted(percentages), "progress in order"
    assert len({(p["percentage"], p["step"]) for p in progress}) == len(progress), "no repeats"
    final = events[-1]["result"]
    assert (final["id"], final["state"]) == (job_id, "success")

    polls = [r.t for r in sim.requests(kind="api") if r.path.endswith("/progress")]
    await asyncio.sleep(1.5)
    assert len([r for r in sim.requests(kind="api") if r.path.endswith("/progress")]) == len(
        polls
    ), "following stopped at the terminal event"
    intervals = [b - a for a, b in itertools.pairwise(polls)]
    assert all(any(d - 0.05 <= interval <= d + 0.35 for d in SCHEDULE) for interval in intervals), (
        intervals
    )
    assert intervals[0] >= SCHEDULE[0] - 0.05


async def test_poll_schedule_backs_off_and_restarts_on_change(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    # 6 s jobs: a percentage step every 0.6 s, so several polls see no change in between.
    sim.configure(time_scale=0.1)
    async with Producer(amqp_url, "itwin.commands") as producer:
        [job_id] = await create_jobs(producer, 1)
        command_id = await producer.publish("job.submit", body({"jobId": job_id}))
        await events_until_terminal(producer, command_id)
    polls = [r.t for r in sim.requests(kind="api") if r.path.endswith("/progress")]
    intervals = [round(b - a, 2) for a, b in itertools.pairwise(polls)]
    nearest = [min(range(len(SCHEDULE)), key=lambda k: abs(SCHEDULE[k] - i)) for i in intervals]
    assert max(nearest) >= 1, f"back-off grows when nothing changes: {intervals}"
    restarts = [k for k, (a, b) in enumerate(itertools.pairwise(nearest)) if b < a]
    assert restarts, f"back-off restarts after a change: {intervals}"
    assert all(b == 0 for a, b in itertools.pairwise(nearest) if b < a)


async def test_cancelling_a_followed_job_ends_with_cancelled(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    sim.configure(time_scale=0.5)  # 30 s: long enough to cancel half-way
    async with Producer(amqp_url, "itwin.commands") as producer:
        [job_id] = await create_jobs(producer, 1)
        command_id = await producer.publish("job.submit", body({"jobId": job_id}))
        async with asyncio.timeout(10):
            await producer.event_for(command_id)
        await asyncio.sleep(1.0)
        cancel = await producer.request("job.cancel", body({"jobId": job_id}))
        assert cancel["type"] == "job.cancel.accepted"
        assert cancel["result"]["state"] == "cancelled"
        events = await events_until_terminal(producer, command_id)
    assert [e["type"] for e in events if e["type"] in TERMINAL] == ["job.cancelled"]
    assert events[-1]["result"]["state"] == "cancelled"


async def test_failed_job_and_follow_of_a_job_submitted_elsewhere(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    sim.configure(time_scale=0.02, job_outcome="failed")
    async with Producer(amqp_url, "itwin.commands") as producer:
        [job_id] = await create_jobs(producer, 1)
        submitted = await producer.request("job.submit", body({"jobId": job_id}))
        follow_id = await producer.publish("job.follow", body({"jobId": job_id}))
        events = await events_until_terminal(producer, follow_id)
        await events_until_terminal(producer, submitted["commandId"])
    assert events[0]["type"] == "job.progress", "following starts with the current progress"
    assert [e["type"] for e in events if e["type"] in TERMINAL] == ["job.failed"]
    assert events[-1]["result"]["executionInformation"]["errors"]


async def test_follow_and_get_of_an_unknown_job_fail_with_job_not_found(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    async with Producer(amqp_url, "itwin.commands") as producer, asyncio.timeout(20):
        followed = await producer.request("job.follow", body({"jobId": str(uuid.uuid4())}))
        got = await producer.request("job.get", body({"jobId": str(uuid.uuid4())}))
    assert followed["type"] == "job.follow.failed"
    assert (followed["error"]["code"], followed["error"]["status"]) == ("JobNotFound", 404)
    assert (got["type"], got["error"]["code"]) == ("job.get.failed", "JobNotFound")


async def test_kill_while_following_100_jobs(
    amqp_url: str, sim: SimulatorHandle, tmp_path: Any, redis_prefix: str
) -> None:
    settings = worker_settings(
        amqp_url,
        sim,
        log_format="json",
        job_poll_schedule=[0.3, 0.6, 1.2],
        redis_url=REDIS_URL,
        redis_prefix=f"{redis_prefix}:{uuid.uuid4().hex}",
    )
    sim.configure(time_scale=0.1)  # 6 s jobs
    worker = WorkerProcess(settings, tmp_path / "before.log")
    await worker.ready()
    async with Producer(amqp_url, "itwin.commands") as producer:
        job_ids = await create_jobs(producer, 100)
        submits = [await producer.publish("job.submit", body({"jobId": j})) for j in job_ids]
        await asyncio.sleep(2.0)
        worker.process.kill()
        await asyncio.to_thread(worker.process.wait)
        worker.stop()
        restarted = WorkerProcess(settings, tmp_path / "after.log")
        try:
            await restarted.ready()
            async with asyncio.timeout(90):
                while sum(e["type"] in TERMINAL for e in producer.events) < len(submits):
                    await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
        finally:
            restarted.stop()
    by_command: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in producer.events:
        by_command[event["commandId"]].append(event)
    for command_id in submits:
        events = by_command[command_id]
        assert [e["type"] for e in events if e["type"] in TERMINAL] == ["job.succeeded"]
        progress = Counter(
            (e["result"]["percentage"], e["result"]["step"])
            for e in events
            if e["type"] == "job.progress"
        )
        assert all(count == 1 for count in progress.values()), progress
