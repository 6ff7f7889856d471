"""Issue 5 acceptance: no command lost, no recorded outcome repeated, through faults.

Real RabbitMQ and Redis; worker processes are killed, stopped and restarted for real.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import uuid
from collections import defaultdict
from typing import Any

import aio_pika
import pytest

from service.dlq import DeadLetters
from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import (
    REDIS_URL,
    SpawnWorkers,
    StartWorker,
    WorkerProcess,
    drain_queue,
    free_port,
    worker_settings,
)

pytestmark = pytest.mark.slow


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def shared_redis(redis_prefix: str) -> dict[str, Any]:
    return {"redis_url": REDIS_URL, "redis_prefix": f"{redis_prefix}:{uuid.uuid4().hex}"}


async def test_resent_commands_get_their_recorded_events_and_no_api_call(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_settings: dict[str, Any]
) -> None:
    """Three replicas share the records (a plain Redis, and a Redis Cluster): whichever gets a
    command again answers it from its record."""
    await spawn_workers(3, **redis_settings)
    ids = [str(uuid.uuid4()) for _ in range(100)]
    async with Producer(amqp_url, "itwin.commands") as first:
        for command_id in ids:
            await first.publish("workspace.create", body({"name": "w"}), message_id=command_id)
        async with asyncio.timeout(30):
            originals = [await first.event_for(command_id) for command_id in ids]
    assert len(sim.requests(kind="api")) == 100
    sim.clear_requests()
    async with Producer(amqp_url, "itwin.commands") as again:
        for command_id in ids:
            await again.publish("workspace.create", body({"name": "w"}), message_id=command_id)
        async with asyncio.timeout(30):
            repeats = [await again.event_for(command_id) for command_id in ids]
    assert repeats == originals, "identical events, event ids included"
    assert sim.requests(kind="api") == []


async def test_delayed_redelivery_then_dead_letter_then_replay(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker, redis_prefix: str
) -> None:
    # The breaker stays out of it (tests/integration/test_outages.py): a few 503s, each a
    # command's own retriable failure.
    await start_worker(
        retry_delays=[0.5, 1.0], retry_attempts=2, breaker_failures=100,
        **shared_redis(redis_prefix),
    )  # fmt: skip
    sim.configure(error_rate=1.0, error_statuses=[503])
    async with Producer(amqp_url, "itwin.commands") as producer:
        command_id = await producer.publish("workspace.create", body({"name": "w"}))
        async with asyncio.timeout(30):
            failed = await producer.event_for(command_id)
        assert (failed["error"]["code"], failed["error"]["retriable"]) == ("RetriesExhausted", True)
        assert len(sim.requests(kind="api")) == 6, "2 attempts, then 2 more after each delay"
        assert len(producer.events) == 1, "no event while delayed attempts remain"

        sim.configure(error_rate=0.0)
        letters = DeadLetters(amqp_url, "itwin-worker.dlq", "itwin-worker.replay")
        assert command_id in {letter.command_id for letter in await letters.entries()}
        replayed = await letters.replay([command_id])
        assert [letter.command_id for letter in replayed] == [command_id]
        async with asyncio.timeout(30):
            while len(producer.events) < 2:
                await asyncio.sleep(0.05)
    recovered = producer.events[1]
    assert (recovered["type"], recovered["commandId"]) == ("workspace.created", command_id)
    assert command_id not in {m.message_id for m in await drain_queue(amqp_url, "itwin-worker.dlq")}


async def test_replay_repeats_a_recorded_outcome_unknown(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker, redis_prefix: str
) -> None:
    await start_worker(api_read_timeout_seconds=0.3, **shared_redis(redis_prefix))
    sim.configure(hang_rate=1.0, hang_seconds=1.0)
    document = {"displayName": "Bentley", "version": "1"}
    async with Producer(amqp_url, "itwin.commands") as producer:
        command_id = await producer.publish("application.create", body(document))
        async with asyncio.timeout(20):
            unknown = await producer.event_for(command_id)
        assert unknown["error"]["code"] == "OutcomeUnknown"
        sim.configure(hang_rate=0.0)
        async with asyncio.timeout(10):  # the hung POST did take effect, a little later
            while sim.requests(kind="api")[0].status is None:
                await asyncio.sleep(0.05)
        # Sent again by a producer: the recorded outcome, no second POST.
        await producer.publish("application.create", body(document), message_id=command_id)
        # Replayed by an operator who checked the API: tried again.
        await DeadLetters(amqp_url, "itwin-worker.dlq", "itwin-worker.replay").replay([command_id])
        async with asyncio.timeout(20):
            while len(producer.events) < 3:
                await asyncio.sleep(0.05)
    assert producer.events[1] == unknown
    # The simulator did process the hung POST, so the operator's replay meets a 409.
    assert producer.events[2]["error"]["code"] == "ApplicationExists"
    assert len(sim.requests(kind="api")) == 2


async def test_sigterm_finishes_commands_in_flight(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers
) -> None:
    [worker] = await spawn_workers(1, prefetch=64, shutdown_grace_seconds=10.0)
    sim.configure(latency_ms=2000)
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = [await producer.publish("workspace.create", body({"name": "w"})) for _ in range(50)]
        async with asyncio.timeout(10):
            while len(sim.requests(kind="api")) < 50:
                await asyncio.sleep(0.05)
        worker.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(worker.process.wait, 20)
        async with asyncio.timeout(5):
            events = [await producer.event_for(command_id) for command_id in ids]
    assert exit_code == 0
    assert {event["type"] for event in events} == {"workspace.created"}


async def test_kill_nine_five_times_loses_nothing_and_repeats_nothing(
    amqp_url: str, sim: SimulatorHandle, tmp_path: Any, redis_prefix: str
) -> None:
    commands, kills, prefetch = 2000, 5, 32
    settings = worker_settings(
        amqp_url, sim, log_format="json", prefetch=prefetch, **shared_redis(redis_prefix)
    )
    sim.configure(latency_ms=2, jitter_ms=4)
    rng = random.Random(5)
    worker = WorkerProcess(settings, tmp_path / "worker-0.log")
    await worker.ready()
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = [
            await producer.publish("workspace.create", body({"name": f"w{i}"}))
            for i in range(commands)
        ]
        for kill in range(kills):
            if kill:
                worker = WorkerProcess(settings, tmp_path / f"worker-{kill}.log")
                await worker.ready()
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            worker.process.kill()
            await asyncio.to_thread(worker.process.wait)
            worker.stop()
        final = WorkerProcess(settings, tmp_path / "worker-final.log")
        try:
            await final.ready()
            async with asyncio.timeout(120):
                for command_id in ids:
                    await producer.event_for(command_id)
            await asyncio.sleep(1.0)
        finally:
            assert final.stop() == 0
    by_command: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in producer.events:
        by_command[event["commandId"]].append(event)
    assert set(by_command) == set(ids), "every command ended with its event"
    unknown = 0
    for events in by_command.values():
        assert all(event == events[0] for event in events), "duplicates are identical"
        if events[0]["type"] != "workspace.created":
            # A POST marked sent when its worker died: concluded, never sent again
            # (contract.md, "An API call is sent at most once per command").
            assert events[0]["error"]["code"] == "OutcomeUnknown", events[0]
            unknown += 1
    assert unknown <= kills * prefetch
    api_calls = len(sim.requests(kind="api"))
    assert commands - unknown <= api_calls <= commands, "no POST sent twice"


async def test_broker_restart_mid_load_loses_nothing(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_prefix: str
) -> None:
    commands = 600
    await spawn_workers(1, **shared_redis(redis_prefix))
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        sink = await channel.declare_queue(
            "test.events", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await sink.bind("itwin.events", routing_key="#")
    # 32 commands in flight at 200 ms each: at most 160/s, so 600 take at least 3.75 s and
    # the restart 1 s after the last publish falls mid-load however fast the worker is.
    sim.configure(latency_ms=200)
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = [
            await producer.publish("workspace.create", body({"name": "w"}), reply=False)
            for _ in range(commands)
        ]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(_rabbitmqctl, "stop_app")
    await asyncio.sleep(2.0)
    await asyncio.to_thread(_rabbitmqctl, "start_app")
    seen: set[str] = set()
    async with asyncio.timeout(120):
        while not set(ids) <= seen:
            try:
                messages = await drain_queue(amqp_url, "test.events", quiet=1.0)
            except (ConnectionError, aio_pika.exceptions.AMQPError):
                await asyncio.sleep(0.5)
                continue
            seen |= {json.loads(m.body)["commandId"] for m in messages}
    assert set(ids) <= seen


def _rabbitmqctl(action: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", action], check=True, capture_output=True, timeout=120)


async def test_redis_unreachable_holds_the_command_and_spends_no_delivery(
    amqp_url: str, start_worker: StartWorker, sim: SimulatorHandle
) -> None:
    """Redis unreachable (issue 15): the command waits unacked at its claim, is not
    redelivered, not dead-lettered and not worked; readiness names Redis. (The poison bound,
    for crashes that are not an outage: tests/unit/test_pipeline.py.)"""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    worker = await start_worker(redis_url=nowhere, retry_initial_seconds=0.05)
    async with Producer(amqp_url, "itwin.commands") as producer:
        command = body({"name": "waiting", "iTwinId": "60805594-3e04-43b5-8fd8-5ccae0de23cc"})
        command_id = await producer.publish("workspace.create", command)
        await asyncio.sleep(8)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await producer.event_for(command_id)
    # The session's vhost holds other tests' dead letters (OutcomeUnknown after a kill -9).
    dead = await drain_queue(amqp_url, "itwin-worker.dlq", quiet=0.5)
    assert command_id not in [m.message_id for m in dead]
    received = worker.metrics.commands_received.labels("workspace.create")._value.get()
    assert received == 1, "one delivery, held"
    assert (await worker.readiness())["redis"] is False
    down = worker.metrics.registry.get_sample_value(
        "itwin_worker_dependency_down", {"dependency": "redis"}
    )
    assert down == 1
    assert sim.requests(kind="api") == []
    # Stopped, the worker gives the command back to its queue, untouched: take it away.
    await worker.stop()
    held = await drain_queue(amqp_url, "itwin-worker.workspace.create", quiet=0.5)
    assert [m.message_id for m in held] == [command_id]


async def test_a_redis_outage_shorter_than_the_back_off_costs_no_command(
    amqp_url: str, start_worker: StartWorker, sim: SimulatorHandle, tmp_path: Any
) -> None:
    """Redis comes up 1.5 s after the command arrives: the delivery waits at its claim
    instead of spending the delivery limit, and the command succeeds."""
    port = free_port()
    worker = await start_worker(
        redis_url=f"redis://127.0.0.1:{port}/0", retry_initial_seconds=0.25, retry_max_seconds=2
    )
    async with Producer(amqp_url, "itwin.commands") as producer:
        command_id = await producer.publish(
            "workspace.create",
            body({"name": "outage", "iTwinId": "60805594-3e04-43b5-8fd8-5ccae0de23cc"}),
        )
        await asyncio.sleep(1.5)
        redis = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path),
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with asyncio.timeout(15):
                event = await producer.event_for(command_id)
        finally:
            redis.terminate()
            await redis.wait()
    assert event["type"] == "workspace.created"
    received = worker.metrics.commands_received.labels("workspace.create")._value.get()
    assert received == 1
    assert len(sim.requests(kind="api")) == 1
