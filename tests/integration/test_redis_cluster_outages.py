"""Issue 25 acceptance: Redis Cluster faults are outages too; commands wait in their queues.

A Redis Cluster of processes the test starts, freezes (SIGSTOP/SIGCONT) and kills by PID; two
worker processes share it; 300 `application.create` against a budget of 40/s, burst 5. The
simulator's request log judges what reached the API (each application is unique by name, so a
second POST of one would be a second application, or a 409), the dead-letter queue what was
given up.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from service.limiter import Bucket, RedisLimiter
from service.outages import REDIS_UNAVAILABLE
from service.producer import Producer
from service.redis_connection import connect_redis
from service.redis_keys import RedisKeys
from service.settings import load_settings
from service.simulator import SimulatorHandle
from tests.support import (
    RedisServer,
    RedisServers,
    SpawnWorkers,
    WorkerProcess,
    cluster_primary_of,
    cluster_replica_of,
    drain_queue,
    free_port,
    max_in_window,
)

pytestmark = pytest.mark.slow

RATE, BURST, COMMANDS = 40.0, 5, 300
DLQ = "itwin-worker.dlq"


async def spawn(spawn_workers: SpawnWorkers, node_url: str, prefix: str) -> list[WorkerProcess]:
    return await spawn_workers(
        2,
        redis_url=node_url,
        redis_cluster=True,
        redis_prefix=prefix,
        rate_limit_per_second=RATE,
        rate_limit_burst=BURST,
    )


async def publish_all(producer: Producer) -> list[str]:
    return [
        await producer.publish(
            "application.create",
            json.dumps({"displayName": f"app-{i}", "version": "1"}).encode(),
        )
        for i in range(COMMANDS)
    ]


async def api_calls_reach(sim: SimulatorHandle, count: int) -> None:
    async with asyncio.timeout(30):
        while len(sim.requests(kind="api")) < count:
            await asyncio.sleep(0.05)


DOWN = ("itwin_worker_dependency_down", {"dependency": "redis"})


async def redis_down_everywhere(workers: list[WorkerProcess], within: float) -> None:
    """Every worker says so: `/readyz` 503 naming redis, and the dependency gauge at 1."""
    async with asyncio.timeout(within):
        while not all([await says_redis_down(worker) for worker in workers]):
            await asyncio.sleep(0.5)


async def says_redis_down(worker: WorkerProcess) -> bool:
    status, checks = await worker.readiness()
    return status == 503 and checks["redis"] is False and await worker.metric(*DOWN) == 1


async def ready_again(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        assert worker.process.poll() is None, "the worker is alive"
        assert (await worker.readiness())[0] == 200
        assert await worker.metric(*DOWN) == 0


async def every_command_created_once(
    amqp_url: str, sim: SimulatorHandle, producer: Producer, ids: list[str], within: float
) -> None:
    async with asyncio.timeout(within):
        for command_id in ids:
            await producer.event_for(command_id)
    await asyncio.sleep(1.0)
    mine = set(ids)
    events = [event for event in producer.events if event.get("commandId") in mine]
    assert sorted(event["commandId"] for event in events) == sorted(ids), "one event each"
    assert {event["type"] for event in events} == {"application.created"}, [
        event.get("error") for event in events if event["type"] != "application.created"
    ]
    posts = [r for r in sim.requests(kind="api") if r.method == "POST"]
    assert len(posts) == COMMANDS, "no command was sent twice"
    assert {r.status for r in posts} == {201}
    dead = await drain_queue(amqp_url, DLQ, quiet=0.5)
    assert [m.message_id for m in dead if m.message_id in mine] == []


async def test_a_primary_stalled_for_20_s_mid_load_holds_the_commands(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_servers: RedisServers
) -> None:
    nodes = await redis_servers.cluster(3)
    prefix = f"itwin-test-{uuid.uuid4().hex[:10]}"
    stalled = await cluster_primary_of(nodes, RedisKeys(prefix).limiter)
    workers = await spawn(spawn_workers, nodes[0].url, prefix)
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = await publish_all(producer)
        await api_calls_reach(sim, COMMANDS // 4)
        stalled.pause()
        resume_at = time.monotonic() + 20.0
        try:
            await redis_down_everywhere(workers, within=19.0)
            await asyncio.sleep(resume_at - time.monotonic())
        finally:
            stalled.resume()
        await every_command_created_once(amqp_url, sim, producer, ids, within=90)
    await ready_again(workers)


async def test_a_primary_killed_mid_load_is_replaced_by_its_replica_within_the_budget(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_servers: RedisServers
) -> None:
    nodes = await redis_servers.cluster(3, replicas=1, node_timeout_ms=1000)
    prefix = f"itwin-test-{uuid.uuid4().hex[:10]}"
    limiter_key = RedisKeys(prefix).limiter
    primary = await cluster_primary_of(nodes, limiter_key)
    replica = await cluster_replica_of(nodes, primary)
    workers = await spawn(spawn_workers, nodes[0].url, prefix)
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = await publish_all(producer)
        await api_calls_reach(sim, COMMANDS // 3)
        killed_at = time.time()
        old_epoch = await replication_id(primary.port)
        primary.kill()
        await every_command_created_once(amqp_url, sim, producer, ids, within=90)
    arrivals = [request.t for request in sim.requests(kind="api")]
    assert min(arrivals) < killed_at < max(arrivals) - 1.0, "the failover came mid-load"
    worst = max_in_window(arrivals, 1.0)
    assert worst <= RATE + 2 * BURST, f"{worst} calls in one second"
    # The budget moved with its slot to the promoted replica, and the limiter saw the new epoch.
    new_primary = Redis(host="127.0.0.1", port=replica.port)
    try:
        replication = await new_primary.info("replication")
        assert replication["role"] == "master"
        epoch = await new_primary.hget(limiter_key, "epoch")
        assert epoch == replication["master_replid"].encode() != old_epoch.encode()
    finally:
        await new_primary.aclose()
    await ready_again(workers)


async def replication_id(port: int) -> str:
    client = Redis(host="127.0.0.1", port=port)
    try:
        replid: str = (await client.info("replication"))["master_replid"]
        return replid
    finally:
        await client.aclose()


async def test_a_cluster_unreachable_for_the_first_15_s_answers_every_command_after(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_servers: RedisServers
) -> None:
    ports = [free_port(with_bus=True) for _ in range(3)]
    prefix = f"itwin-test-{uuid.uuid4().hex[:10]}"
    workers = await spawn(spawn_workers, f"redis://127.0.0.1:{ports[0]}/0", prefix)
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = await publish_all(producer)
        unreachable_until = time.monotonic() + 15.0
        await redis_down_everywhere(workers, within=14.0)
        await asyncio.sleep(unreachable_until - time.monotonic())
        assert producer.events == []
        assert sim.requests(kind="api") == []
        await redis_servers.cluster(3, ports=ports)
        await every_command_created_once(amqp_url, sim, producer, ids, within=90)
    await ready_again(workers)


async def test_a_replica_promoted_without_the_last_reservations_counts_the_burst_as_spent(
    redis_servers: RedisServers,
) -> None:
    """The limiter's guard on a real failover that lost writes: the primary gives the whole
    burst while its replica is frozen and cut off, dies, and the replica takes over with the
    state from before. Without the guard (its epoch, `service/limiter.py`) the burst would be
    given again."""
    nodes = await redis_servers.cluster(3, replicas=1, node_timeout_ms=1000)
    keys = RedisKeys(f"itwin-test-{uuid.uuid4().hex[:10]}")
    primary = await cluster_primary_of(nodes, keys.limiter)
    replica = await cluster_replica_of(nodes, primary)
    [entry, *_] = [node for node in nodes if node not in (primary, replica)]
    connection = connect_redis(load_settings(redis_url=entry.url, redis_cluster=True))
    assert connection is not None
    bucket = Bucket(rate=2.0, burst=4)
    limiter = RedisLimiter(connection.client, keys, [bucket])
    try:
        _, old_epoch = await limiter._reserve()
        assert await command(primary, "WAIT", 1, 5000) == 1, "the replica has the state"
        # Frozen, and cut off: what the primary writes from now on never reaches it.
        replica.pause()
        assert await command(primary, "CLIENT", "KILL", "TYPE", "replica") == 1
        for _ in range(bucket.burst - 1):
            assert (await limiter._reserve())[0] < bucket.interval, "the burst, from the primary"
        given = float(await command(primary, "HGET", keys.limiter, "tat1"))
        primary.kill()
        replica.resume()
        async with asyncio.timeout(30):
            while (await command(replica, "ROLE"))[0] != b"master":
                await asyncio.sleep(0.1)
        kept = float(await command(replica, "HGET", keys.limiter, "tat1"))
        assert kept < given, "the promoted replica lost the primary's last reservations"

        slots = [await reserve_once_up(limiter) for _ in range(bucket.burst)]
        assert {epoch for _, epoch in slots} == {await replication_id(replica.port)} != {old_epoch}
        # The steady rate from the first slot on: no second burst.
        waits = [wait for wait, _ in slots]
        assert waits[-1] >= (bucket.burst - 1) * bucket.interval - 0.25, waits
    finally:
        await connection.aclose()


async def command(node: RedisServer, *args: Any) -> Any:
    client = node.client()
    try:
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


async def reserve_once_up(limiter: RedisLimiter) -> tuple[float, str]:
    """A reservation, once the cluster serves the limiter's slot again."""
    async with asyncio.timeout(30):
        while True:
            try:
                return await limiter._reserve()
            except REDIS_UNAVAILABLE:
                await asyncio.sleep(0.1)
