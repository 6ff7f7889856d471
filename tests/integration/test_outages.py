"""Issue 15 acceptance: while a dependency is down, commands wait in their queues.

Real RabbitMQ; a Redis the test starts and stops on its own port; the simulator's faults
(`error_rate` with 503 only, `token_endpoint_down`), and its request log as the judge of what
reached the API.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from service.app import Worker
from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import (
    REDIS_URL,
    RedisServers,
    SpawnWorkers,
    StartWorker,
    drain_queue,
)

pytestmark = pytest.mark.slow

DLQ = "itwin-worker.dlq"


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


async def ready_within(worker: Worker, seconds: float) -> float:
    """Seconds until the worker's readiness is all true (fails past `seconds`)."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        while not all((await worker.readiness()).values()):
            await asyncio.sleep(0.1)
    return time.monotonic() - started


async def dead_letters_of(amqp_url: str, ids: list[str]) -> list[Any]:
    """This test's commands in the dead-letter queue (the vhost's other tests have their own)."""
    mine = set(ids)
    return [m for m in await drain_queue(amqp_url, DLQ) if m.message_id in mine]


async def test_redis_stopped_mid_load_and_back_empty_loses_and_repeats_nothing(
    amqp_url: str,
    sim: SimulatorHandle,
    start_worker: StartWorker,
    redis_servers: RedisServers,
    redis_prefix: str,
) -> None:
    server = await redis_servers.server()
    port = server.port
    sim.configure(latency_ms=50)
    worker = await start_worker(
        redis_url=server.url, redis_prefix=redis_prefix, rate_limit_per_second=20.0
    )
    commands = 300
    async with Producer(amqp_url, "itwin.commands") as producer:
        # Each application is unique by name: a second POST of one would meet 409.
        ids = [
            await producer.publish(
                "application.create", body({"displayName": f"app-{i}", "version": "1"})
            )
            for i in range(commands)
        ]
        async with asyncio.timeout(20):
            while len(producer.events) < 40:
                await asyncio.sleep(0.05)
        server.stop()
        await asyncio.sleep(20)
        checks = await worker.readiness()
        assert checks["redis"] is False, checks
        assert (
            worker.metrics.registry.get_sample_value(
                "itwin_worker_dependency_down", {"dependency": "redis"}
            )
            == 1
        )
        during = len(producer.events)
        server = await redis_servers.server(port=port)
        assert await ready_within(worker, 5.0) <= 5.0
        async with asyncio.timeout(60):
            events = [await producer.event_for(command_id) for command_id in ids]
        await asyncio.sleep(1.0)
        assert len(producer.events) == commands, "exactly one event per command"
    assert during < commands, "the outage came mid-load"
    assert {event["type"] for event in events} == {"application.created"}, {
        event.get("error", {}).get("code") for event in events
    }
    assert await dead_letters_of(amqp_url, ids) == []
    posts = [r for r in sim.requests(kind="api") if r.method == "POST"]
    assert len(posts) == commands, "no command was sent twice"
    assert (
        worker.metrics.registry.get_sample_value(
            "itwin_worker_dependency_down", {"dependency": "redis"}
        )
        == 0
    )


async def test_an_api_answering_503_holds_commands_and_two_replicas_probe_it_gently(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_prefix: str
) -> None:
    outage, commands = 45.0, 300
    sim.configure(latency_ms=50)
    await spawn_workers(
        2,
        redis_url=REDIS_URL,
        redis_prefix=f"{redis_prefix}:{uuid.uuid4().hex}",
        rate_limit_per_second=30.0,
        rate_limit_burst=10,
        # A command parked in a delay queue would come back only after the 30 s bound.
        retry_delays=[60.0],
    )
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = [
            await producer.publish("workspace.create", body({"name": f"w{i}"}))
            for i in range(commands)
        ]
        async with asyncio.timeout(20):
            while len(producer.events) < 30:
                await asyncio.sleep(0.05)
        sim.configure(error_rate=1.0, error_statuses=[503])
        down = time.time()
        await asyncio.sleep(outage)
        sim.configure(error_rate=0.0)
        up = time.time()
        during = len(producer.events)
        async with asyncio.timeout(30):
            events = [await producer.event_for(command_id) for command_id in ids]
        await asyncio.sleep(1.0)
        assert len(producer.events) == commands
    assert during < commands, "the outage came mid-load"
    assert {event["type"] for event in events} == {"workspace.created"}, {
        event.get("error", {}).get("code") for event in events
    }
    failing = [r for r in sim.requests(kind="api") if down <= r.t <= up]
    assert failing, "the outage met calls"
    assert len(failing) <= 2 * outage, f"{len(failing)} calls into the failing API in {outage} s"
    assert await dead_letters_of(amqp_url, ids) == []
    assert await drain_queue(amqp_url, "itwin-worker.wait.60s", quiet=0.5) == []


async def test_token_endpoint_down_for_30_s_gives_no_unauthorized_and_every_command_succeeds(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    sim.configure(token_endpoint_down=True)
    worker = await start_worker()
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = [
            await producer.publish("workspace.create", body({"name": f"w{i}"})) for i in range(20)
        ]
        await asyncio.sleep(30)
        assert producer.events == [], "no failure event while the token endpoint is down"
        assert (await worker.readiness())["token_endpoint"] is False
        sim.configure(token_endpoint_down=False)
        async with asyncio.timeout(30):
            events = [await producer.event_for(command_id) for command_id in ids]
    assert {event["type"] for event in events} == {"workspace.created"}
    assert len(sim.requests(kind="token")) < 60, "the token endpoint was probed, not hammered"
    assert await dead_letters_of(amqp_url, ids) == []
