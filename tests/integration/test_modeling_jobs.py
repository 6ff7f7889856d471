"""Issue 26 acceptance: Reality Modeling v2 jobs as commands, followed to their end, over real
RabbitMQ against the simulator.

The simulator runs jobs on a compressed clock (a 30 s simulated job takes 3 s) and the worker
polls on a compressed schedule, so every job a test makes has ended, and nobody follows it any
more, when the test ends.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.job_kinds import ACCEPT_V1, ACCEPT_V2
from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import (
    ITWIN,
    REDIS_URL,
    StartWorker,
    WorkerProcess,
    drain_queue,
    max_in_window,
    request,
    worker_settings,
)

pytestmark = pytest.mark.slow

SCHEDULE = [0.2, 0.4, 0.8]
THREE_SECOND_JOBS = {"job_duration_seconds": 30, "time_scale": 0.1}
TERMINAL = {"modeling.job.succeeded", "modeling.job.failed", "modeling.job.cancelled"}
OTHER_ITWIN = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
DLQ = "itwin-worker.dlq"


def reconstruction(itwin: str = ITWIN, name: str = "Bridge") -> dict[str, Any]:
    return {
        "type": "Reconstruction",
        "name": name,
        "iTwinId": itwin,
        "specifications": {
            "inputs": {"scene": "9a1e5c37-scene", "regionOfInterest": "bkt:roi.json"},
            "outputs": {"modelingReference": True, "exports": [{"format": "3DTiles"}]},
        },
    }


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


async def create_jobs(producer: Producer, documents: list[dict[str, Any]]) -> list[str]:
    """Send one `modeling.job.create` per document; the create command ids, once all are made."""
    ids = [await producer.publish("modeling.job.create", body(d)) for d in documents]
    async with asyncio.timeout(20):
        for command_id in ids:
            created = await producer.event_for(command_id)
            assert created["type"] == "modeling.job.created", created
    return ids


def job_of(producer: Producer, command_id: str) -> str:
    created = next(e for e in producer.events if e["commandId"] == command_id)
    return str(created["result"]["id"])


async def until_ended(producer: Producer, command_ids: list[str], within: float = 30) -> None:
    async with asyncio.timeout(within):
        while not all(
            any(e["commandId"] == c and e["type"] in TERMINAL for e in producer.events)
            for c in command_ids
        ):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.6)  # anything after a terminal event would be a bug


def events_of(producer: Producer, command_id: str) -> list[dict[str, Any]]:
    return [e for e in producer.events if e["commandId"] == command_id]


async def test_three_v2_jobs_each_end_in_their_one_right_terminal_event(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    sim.configure(**THREE_SECOND_JOBS)
    async with Producer(amqp_url, "itwin.commands") as producer:
        succeeding, failing, cancelled = await create_jobs(
            producer, [reconstruction(name=n) for n in ("succeeds", "fails", "is cancelled")]
        )
        sim.set_job_outcome(job_of(producer, failing), "failed")
        async with asyncio.timeout(10):
            while "modeling.job.progress" not in {
                e["type"] for e in events_of(producer, cancelled)
            }:
                await asyncio.sleep(0.05)
        cancel = await request(
            producer, "modeling.job.cancel", {"jobId": job_of(producer, cancelled)}
        )
        await until_ended(producer, [succeeding, failing, cancelled])

    assert cancel["type"] == "modeling.job.cancel.accepted", cancel
    assert cancel["result"]["state"] == "TerminatingOnCancel"
    outcomes = {}
    for command_id in (succeeding, failing, cancelled):
        events = events_of(producer, command_id)
        assert events[0]["type"] == "modeling.job.created"
        assert [e["type"] for e in events if e["type"] in TERMINAL] == [events[-1]["type"]]
        progress = [e["result"] for e in events if e["type"] == "modeling.job.progress"]
        assert progress, "at least one progress event"
        assert all(set(p) == {"jobId", "percentage", "state"} for p in progress)
        assert [p["percentage"] for p in progress] == sorted(p["percentage"] for p in progress)
        assert len({(p["percentage"], p["state"]) for p in progress}) == len(progress), "no repeat"
        outcomes[command_id] = events[-1]
    succeeded = outcomes[succeeding]
    assert (succeeded["type"], succeeded["result"]["state"]) == (
        "modeling.job.succeeded",
        "Success",
    )
    assert "messages" not in succeeded
    failed = outcomes[failing]
    assert (failed["type"], failed["result"]["state"]) == ("modeling.job.failed", "Failed")
    [error] = failed["messages"]["errors"]
    assert (error["code"], failed["messages"]["warnings"]) == ("ProcessingFailed", [])
    ended = outcomes[cancelled]
    assert (ended["type"], ended["result"]["state"]) == ("modeling.job.cancelled", "Cancelled")
    states = [e["result"]["state"] for e in events_of(producer, cancelled)[1:-1]]
    assert "TerminatingOnCancel" in states, "the way to Cancelled is announced, and not an end"
    posts = [r for r in sim.requests() if r.method == "POST"]
    assert len(posts) == 3, "each creation sent once"


async def test_a_list_by_itwin_with_top_2_over_three_jobs_is_two_pages(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    sim.configure(job_duration_seconds=10, time_scale=0.1)
    async with Producer(amqp_url, "itwin.commands") as producer:
        mine = await create_jobs(
            producer, [reconstruction(OTHER_ITWIN, f"job {n}") for n in range(3)]
        )
        others = await create_jobs(producer, [reconstruction(ITWIN)])
        first = await request(producer, "modeling.job.list", {"iTwinId": OTHER_ITWIN, "top": 2})
        token = first["result"]["continuationToken"]
        second = await request(
            producer,
            "modeling.job.list",
            {"iTwinId": OTHER_ITWIN, "top": 2, "continuationToken": token},
        )
        await until_ended(producer, mine + others)
    assert first["type"] == second["type"] == "modeling.job.listed"
    assert isinstance(token, str)
    assert len(first["result"]["jobs"]) == 2
    assert len(second["result"]["jobs"]) == 1
    assert second["result"]["continuationToken"] is None
    listed = [job["id"] for job in first["result"]["jobs"] + second["result"]["jobs"]]
    assert listed == [job_of(producer, c) for c in mine]
    lists = [r for r in sim.requests() if r.method == "GET" and r.path == "/reality-modeling/jobs"]
    assert len(lists) == 2


async def test_a_get_of_an_unknown_job_is_a_404_job_not_found(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    unknown = str(uuid.uuid4())
    async with Producer(amqp_url, "itwin.commands") as producer:
        got = await request(producer, "modeling.job.get", {"jobId": unknown})
        followed = await request(producer, "modeling.job.follow", {"jobId": unknown})
        messages = await request(producer, "modeling.job.messages", {"jobId": unknown})
    for event, routing_key in ((got, "get"), (followed, "follow"), (messages, "messages")):
        assert event["type"] == f"modeling.job.{routing_key}.failed", event
        error = event["error"]
        assert (error["status"], error["code"], error["retriable"]) == (404, "JobNotFound", False)


async def test_an_invalid_type_is_refused_before_any_call(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    async with Producer(amqp_url, "itwin.commands") as producer:
        command_id = await producer.publish(
            "modeling.job.create", body(reconstruction() | {"type": "Objects2D"})
        )
        async with asyncio.timeout(20):
            refused = await producer.event_for(command_id)
    assert refused["type"] == "modeling.job.create.failed"
    error = refused["error"]
    assert (error["code"], error["status"], refused["attempts"]) == ("InvalidCommand", None, 0)
    assert [d["target"] for d in error["details"]] == ["type"]
    assert [r for r in sim.requests() if r.path.startswith("/reality-modeling/")] == []
    dead = [m for m in await drain_queue(amqp_url, DLQ) if m.message_id == command_id]
    assert len(dead) == 1


async def test_every_v2_request_carries_the_v2_accept_and_every_v1_request_the_v1(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    sim.configure(job_duration_seconds=10, time_scale=0.1)
    async with Producer(amqp_url, "itwin.commands") as producer:
        workspace = await request(producer, "workspace.create", {"name": "both"})
        job = await request(producer, "job.create", {
            "type": "Full", "name": "v1", "workspaceId": workspace["result"]["id"],
            "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"}],
            "settings": {"outputs": ["OBJ"]},
        })  # fmt: skip
        submit = await producer.publish("job.submit", body({"jobId": job["result"]["id"]}))
        [create] = await create_jobs(producer, [reconstruction()])
        v2_job = job_of(producer, create)
        await request(producer, "modeling.job.get", {"jobId": v2_job})
        await request(producer, "modeling.job.list", {"iTwinId": ITWIN, "state": "Queued"})
        async with asyncio.timeout(30):
            while not any(e["type"] == "job.succeeded" for e in events_of(producer, submit)):
                await asyncio.sleep(0.05)
        await until_ended(producer, [create])
        await request(producer, "modeling.job.messages", {"jobId": v2_job})
    calls = sim.requests()
    v1 = [r for r in calls if r.path.startswith("/contextcapture/")]
    v2 = [r for r in calls if r.path.startswith("/reality-modeling/")]
    assert (len(v1) >= 5, len(v2) >= 6) == (True, True), (len(v1), len(v2))
    assert len(v1) + len(v2) == len(calls)
    assert {r.accept for r in v1} == {ACCEPT_V1}
    assert {r.accept for r in v2} == {ACCEPT_V2}
    assert any(r.path.endswith("/progress") for r in v1)
    assert any(r.path.endswith("/progress") for r in v2)


async def test_a_lost_cancel_answer_is_repeated_and_settled_and_a_lost_create_is_not_repeated(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(job_poll_schedule=SCHEDULE)
    sim.configure(**THREE_SECOND_JOBS)
    # Made straight at the simulator, so that no follower's poll takes the dropped answer.
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as http:
        form = {"grant_type": "client_credentials", "scope": "itwin-platform"}
        auth = (sim.client_id, sim.client_secret)
        token = (await http.post(sim.token_url, data=form, auth=auth)).json()["access_token"]
        made = await http.post(
            "/reality-modeling/jobs",
            json=reconstruction(),
            headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT_V2},
        )
    job_id = made.json()["job"]["id"]
    sim.clear_requests()
    async with Producer(amqp_url, "itwin.commands") as producer:
        sim.drop_next(1)
        cancel = await request(producer, "modeling.job.cancel", {"jobId": job_id})
        sim.drop_next(1)
        lost = await request(producer, "modeling.job.create", reconstruction(name="lost"))
    # The session's other tests may have left polls behind: only this test's paths count.
    calls = sim.requests()
    cancelled = [(r.method, r.status) for r in calls if r.path.endswith(job_id)]
    created = [(r.method, r.status) for r in calls if r.path == "/reality-modeling/jobs"]
    assert cancelled == [("DELETE", None), ("DELETE", 422), ("GET", 200)]
    assert (cancel["type"], cancel["result"]["state"], cancel["attempts"]) == (
        "modeling.job.cancel.accepted", "TerminatingOnCancel", 3,
    )  # fmt: skip
    assert lost["type"] == "modeling.job.create.failed"
    assert lost["error"]["code"] == "OutcomeUnknown"
    assert created == [("POST", None)], "a creation whose answer was lost is not sent again"


async def test_a_kill_while_v2_jobs_are_followed_leaves_one_terminal_event_each(
    amqp_url: str, sim: SimulatorHandle, tmp_path: Path, redis_prefix: str
) -> None:
    settings = worker_settings(
        amqp_url,
        sim,
        log_format="json",
        job_poll_schedule=[0.3, 0.6, 1.2],
        redis_url=REDIS_URL,
        redis_prefix=f"{redis_prefix}:{uuid.uuid4().hex}",
    )
    sim.configure(**THREE_SECOND_JOBS)
    worker = WorkerProcess(settings, tmp_path / "before.log")
    await worker.ready()
    async with Producer(amqp_url, "itwin.commands") as producer:
        creates = await create_jobs(producer, [reconstruction(name=f"job {n}") for n in range(20)])
        for command_id in creates[::4]:
            sim.set_job_outcome(job_of(producer, command_id), "failed")
        await asyncio.sleep(1.0)  # every job followed, polls parked in the delay queues
        worker.process.kill()
        await asyncio.to_thread(worker.process.wait)
        worker.stop()
        restarted = WorkerProcess(settings, tmp_path / "after.log")
        try:
            await restarted.ready()
            await until_ended(producer, creates, within=60)
            await asyncio.sleep(1.0)
        finally:
            restarted.stop()
    by_command: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in producer.events:
        by_command[event["commandId"]].append(event)
    for n, command_id in enumerate(creates):
        events = by_command[command_id]
        expected = "modeling.job.failed" if n % 4 == 0 else "modeling.job.succeeded"
        assert [e["type"] for e in events if e["type"] in TERMINAL] == [expected], events
        assert [e["type"] for e in events].count("modeling.job.created") == 1
        progress = Counter(
            (e["result"]["percentage"], e["result"]["state"])
            for e in events
            if e["type"] == "modeling.job.progress"
        )
        assert all(count == 1 for count in progress.values()), progress
    assert len([r for r in sim.requests() if r.method == "POST"]) == 20


async def test_jobs_of_both_generations_share_the_budget_and_its_poll_floor(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    rate, burst, share = 10.0, 2, 0.25
    await start_worker(
        job_poll_schedule=[0.1],  # four of each: 80 polls a second wanted, 10 calls allowed
        rate_limit_per_second=rate,
        rate_limit_burst=burst,
        poll_min_share=share,
    )
    sim.configure(job_duration_seconds=2000, time_scale=0.01)  # 20 s runs outlive the flood
    async with Producer(amqp_url, "itwin.commands") as producer:
        workspace = await request(producer, "workspace.create", {"name": "budget"})
        v1_job = {
            "type": "Full", "name": "v1", "workspaceId": workspace["result"]["id"],
            "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"}],
            "settings": {"outputs": ["OBJ"]},
        }  # fmt: skip
        v1_ids = [(await request(producer, "job.create", v1_job))["result"]["id"] for _ in range(4)]
        submits = [await producer.publish("job.submit", body({"jobId": j})) for j in v1_ids]
        creates = await create_jobs(producer, [reconstruction(name=f"v2 {n}") for n in range(4)])
        v2_ids = [job_of(producer, c) for c in creates]
        async with asyncio.timeout(20):
            while not {*v1_ids, *v2_ids} <= _polled(sim):
                await asyncio.sleep(0.1)
        # A backlog of commands: 40 gets at once, four seconds of the whole budget.
        gets = [
            await producer.publish(routing_key, body({"jobId": job}))
            for routing_key, job in itertools.islice(
                itertools.cycle([*(("job.get", j) for j in v1_ids),
                                 *(("modeling.job.get", j) for j in v2_ids)]), 40)
        ]  # fmt: skip
        async with asyncio.timeout(30):
            answers = [await producer.event_for(g) for g in gets]
        calls = sim.requests()
        for job in v1_ids:
            await request(producer, "job.cancel", {"jobId": job})
        for job in v2_ids:
            await request(producer, "modeling.job.cancel", {"jobId": job})
        # Followed to their ends, so that no poll of theirs outlives the test.
        ends = {"job.succeeded", "job.failed", "job.cancelled", *TERMINAL}
        async with asyncio.timeout(30):
            while sum(e["type"] in ends for e in producer.events) < len(submits + creates):
                await asyncio.sleep(0.1)
    assert {a["type"] for a in answers} == {"job.retrieved", "modeling.job.retrieved"}

    arrivals = [r.t for r in calls]
    for window in (1.0, 3.0):
        assert max_in_window(arrivals, window) <= rate * window + burst, "one budget for all"
    jobs = {*v1_ids, *v2_ids}
    gets_called = [r.t for r in calls if r.method == "GET" and r.path.split("/")[-1] in jobs]
    start, end = min(gets_called), max(gets_called)
    during = [r for r in calls if start <= r.t <= end and r.path.endswith("/progress")]
    v1_polls = sum(r.path.startswith("/contextcapture/") for r in during)
    v2_polls = sum(r.path.startswith("/reality-modeling/") for r in during)
    floor = share * rate * (end - start)
    assert v1_polls + v2_polls >= 0.7 * floor, (v1_polls, v2_polls, floor)
    assert min(v1_polls, v2_polls) >= 0.25 * (v1_polls + v2_polls), (v1_polls, v2_polls)
    assert {r.accept for r in calls if r.path.startswith("/reality-modeling/")} == {ACCEPT_V2}
    assert {r.accept for r in calls if r.path.startswith("/contextcapture/")} == {ACCEPT_V1}


def _polled(sim: SimulatorHandle) -> set[str]:
    """The jobs whose progress the simulator was asked for."""
    return {r.path.split("/")[-2] for r in sim.requests() if r.path.endswith("/progress")}
