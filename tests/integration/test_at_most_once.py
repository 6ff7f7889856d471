"""Issue 23 acceptance: a request that is not safe to repeat leaves at most once per command,
through kill -9 of the worker and a command held far longer than its lease.

Worker processes against the real broker, Redis and the simulator; the simulator's request log
is what counts the POSTs.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import (
    REDIS_URL,
    StartWorker,
    WorkerProcess,
    drain_queue,
    rabbitmqctl,
    sent_twice,
    worker_settings,
)

pytestmark = pytest.mark.slow


def shared_redis(redis_prefix: str) -> dict[str, Any]:
    return {"redis_url": REDIS_URL, "redis_prefix": f"{redis_prefix}:{uuid.uuid4().hex}"}


def by_command(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        grouped[event["commandId"]].append(event)
    return grouped


async def test_kill_nine_with_40_posts_in_flight(
    amqp_url: str, sim: SimulatorHandle, redis_prefix: str, tmp_path: Path
) -> None:
    """The API answers in 2 s; the worker dies with every POST out; a new worker takes the
    commands over when their leases end: each is answered once, none is sent again, and those
    whose answer died with the worker end in OutcomeUnknown (a workspace cannot be looked up)."""
    settings = worker_settings(
        amqp_url, sim, log_format="json", prefetch=64, **shared_redis(redis_prefix)
    )
    sim.configure(latency_ms=2000)
    first = WorkerProcess(settings, tmp_path / "first.log")
    await first.ready()
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = [
            await producer.publish("workspace.create", json.dumps({"name": f"w{i}"}).encode())
            for i in range(40)
        ]
        async with asyncio.timeout(10):
            while len(sim.requests(kind="api")) < 40:
                await asyncio.sleep(0.05)
        first.process.kill()
        await asyncio.to_thread(first.process.wait)
        first.stop()
        second = WorkerProcess(settings, tmp_path / "second.log")
        try:
            await second.ready()
            async with asyncio.timeout(60):
                for command_id in ids:
                    await producer.event_for(command_id)
            await asyncio.sleep(1.0)
        finally:
            assert second.stop() == 0
    events = by_command(producer.events)
    assert set(events) == set(ids)
    for answers in events.values():
        assert all(answer == answers[0] for answer in answers)
        assert answers[0]["error"]["code"] == "OutcomeUnknown", answers[0]
    assert len(sim.requests(kind="api")) == 40
    assert sent_twice(sim) == []


async def test_three_kills_during_1000_application_creates(
    amqp_url: str, sim: SimulatorHandle, redis_prefix: str, tmp_path: Path
) -> None:
    """Every command ends in its true outcome (created: the application is found by its name
    and version) or in OutcomeUnknown; no POST twice, so no 409 for an application that was
    made by the lost attempt."""
    settings = worker_settings(
        amqp_url, sim, log_format="json", prefetch=32, **shared_redis(redis_prefix)
    )
    sim.configure(latency_ms=20)
    rng = random.Random(23)
    names = {f"app-{uuid.uuid4().hex}": "" for _ in range(1000)}
    worker = WorkerProcess(settings, tmp_path / "worker-0.log")
    await worker.ready()  # it declares the topology the producer publishes to
    async with Producer(amqp_url, "itwin.commands") as producer:
        for name in names:
            document = {"displayName": name, "version": "1"}
            names[name] = await producer.publish(
                "application.create", json.dumps(document).encode()
            )
        for kill in range(3):
            if kill:
                worker = WorkerProcess(settings, tmp_path / f"worker-{kill}.log")
                await worker.ready()
            # Mid-load: a quarter more of the commands answered, and a little more.
            async with asyncio.timeout(60):
                while len({e["commandId"] for e in producer.events}) < 250 * (kill + 1):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            worker.process.kill()
            await asyncio.to_thread(worker.process.wait)
            worker.stop()
        final = WorkerProcess(settings, tmp_path / "final.log")
        try:
            await final.ready()
            async with asyncio.timeout(120):
                for command_id in names.values():
                    await producer.event_for(command_id)
            await asyncio.sleep(1.0)
        finally:
            assert final.stop() == 0
    events = by_command(producer.events)
    assert set(events) == set(names.values())
    outcomes: Counter[str] = Counter()
    for answers in events.values():
        assert all(answer == answers[0] for answer in answers)
        first = answers[0]
        outcomes[first["type"] if "result" in first else first["error"]["code"]] += 1
    assert set(outcomes) <= {"application.created", "OutcomeUnknown"}, outcomes
    assert sent_twice(sim) == []
    assert len([r for r in sim.requests(kind="api") if r.method == "POST"]) <= 1000


async def test_a_command_held_90_s_is_sent_once_though_delivered_twice(
    amqp_url: str, sim: SimulatorHandle, redis_prefix: str, tmp_path: Path
) -> None:
    """1 call/s and a backlog: the last command waits ~90 s for its slot (three default
    leases) while a second worker gets the same command again; the second waits for the
    first's outcome instead of taking the command over."""
    budget = {"rate_limit_per_second": 1.0, "rate_limit_burst": 1}
    settings = worker_settings(
        amqp_url, sim, log_format="json", prefetch=90, idempotency_lease_seconds=30.0,
        **budget, **shared_redis(redis_prefix),
    )  # fmt: skip
    holder = WorkerProcess(settings, tmp_path / "holder.log")
    await holder.ready()
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = [
            await producer.publish("workspace.create", json.dumps({"name": f"w{i}"}).encode())
            for i in range(90)
        ]
        await asyncio.sleep(1.0)  # all 90 are the holder's now
        other = WorkerProcess(settings, tmp_path / "other.log")
        try:
            await other.ready()
            last = ids[-1]
            await producer.publish(
                "workspace.create", json.dumps({"name": "w89"}).encode(), message_id=last
            )
            async with asyncio.timeout(150):
                while len([e for e in producer.events if e["commandId"] == last]) < 2:
                    await asyncio.sleep(0.5)
        finally:
            other.stop()
            holder.stop()
    answers = [e for e in producer.events if e["commandId"] == last]
    assert answers[0] == answers[1]
    assert answers[0]["type"] == "workspace.created"
    assert sent_twice(sim) == []
    assert "lease lost" not in holder.log()


async def test_a_hung_post_whose_connection_closes_is_not_sent_again(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker, redis_prefix: str
) -> None:
    """The API never answers the POST; meanwhile the broker closes the worker's connection.
    The command's work goes on without its delivery, ends in OutcomeUnknown at the read
    timeout, and the delivery that comes back after the reconnect answers from the record."""
    await start_worker(api_read_timeout_seconds=3.0, **shared_redis(redis_prefix))
    sink = f"test.hung.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            sink, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind("itwin.events", routing_key="application.create.failed")
    sim.configure(hang_rate=1.0, hang_seconds=30.0)
    async with Producer(amqp_url, "itwin.commands") as producer:
        document = {"displayName": "hung", "version": "1"}
        command_id = await producer.publish(
            "application.create", json.dumps(document).encode(), reply=False
        )
    async with asyncio.timeout(10):
        while not sim.requests(kind="api"):
            await asyncio.sleep(0.05)
    vhost = amqp_url.rsplit("/", 1)[1]
    for line in rabbitmqctl("list_connections", "pid", "vhost").splitlines():
        pid, _, connection_vhost = line.partition("\t")
        if connection_vhost == vhost:  # the worker's: nobody else is connected now
            rabbitmqctl("close_connection", pid, "test: the broker drops the worker")
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while not any(event["commandId"] == command_id for event in events):
            events += [json.loads(m.body) for m in await drain_queue(amqp_url, sink, quiet=0.5)]
    assert {event["error"]["code"] for event in events} == {"OutcomeUnknown"}
    assert len([r for r in sim.requests(kind="api") if r.method == "POST"]) == 1
