"""Redis through Sentinel: the primary fails over mid-load and the worker follows.

A primary, a replica and three sentinels, all started here; three worker processes share the
budget and the idempotency records through the master the sentinels name. Mid-load an operator
fails the primary over (`SENTINEL FAILOVER`) and stops the old one. Replication is
asynchronous, so the old primary's last writes are lost: the limiter must notice (its epoch,
`service/limiter.py`) rather than hand out the lost slots again.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import RedisServer, RedisServers, SpawnWorkers, drain_queue, max_in_window

pytestmark = pytest.mark.slow

MASTER = "itwin"


async def master_port(sentinel: RedisServer) -> int:
    client = sentinel.client()
    try:
        _, port = await client.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER
        )
        return int(port)
    finally:
        await client.aclose()


async def watching(sentinel: RedisServer, replicas: int, sentinels: int) -> bool:
    """The sentinel knows the replicas and the other sentinels: a failover can start."""
    client = sentinel.client()
    try:
        state: dict[str, Any] = await client.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL MASTER", MASTER
        )
        known_replicas: int = state["num-slaves"]
        other_sentinels: int = state["num-other-sentinels"]
        return known_replicas == replicas and other_sentinels == sentinels - 1
    finally:
        await client.aclose()


async def test_a_failover_mid_load_loses_no_command_and_keeps_the_budget(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_servers: RedisServers
) -> None:
    rate, burst, commands = 40.0, 5, 600
    primary = await redis_servers.server()
    replica = await redis_servers.replica(primary)
    sentinels = [await redis_servers.sentinel(MASTER, primary, quorum=2) for _ in range(3)]
    async with asyncio.timeout(30):
        while not all([await watching(s, replicas=1, sentinels=3) for s in sentinels]):
            await asyncio.sleep(0.2)
    await spawn_workers(
        3,
        rate_limit_per_second=rate,
        rate_limit_burst=burst,
        redis_sentinels=[sentinel.address for sentinel in sentinels],
        redis_sentinel_master=MASTER,
        redis_prefix=f"itwin-test-{uuid.uuid4().hex[:10]}",
    )
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = [
            await producer.publish("workspace.create", b'{"name": "w"}') for _ in range(commands)
        ]
        # 600 commands at 40/s take 15 s: the failover comes a third of the way in.
        async with asyncio.timeout(30):
            while len(sim.requests(kind="api")) < commands // 3:
                await asyncio.sleep(0.05)
        failover_at = sim.requests(kind="api")[-1].t
        operator = sentinels[0].client()
        await operator.execute_command("SENTINEL FAILOVER", MASTER)  # type: ignore[no-untyped-call]
        await operator.aclose()
        async with asyncio.timeout(30):
            while await master_port(sentinels[0]) != replica.port:
                await asyncio.sleep(0.05)
        primary.stop()
        async with asyncio.timeout(90):
            events = [await producer.event_for(command_id) for command_id in ids]
        await asyncio.sleep(1.0)
        assert len(producer.events) == commands, "exactly one event per command"
    assert {event["type"] for event in events} == {"workspace.created"}
    dead = await drain_queue(amqp_url, "itwin-worker.dlq", quiet=0.5)
    assert not {message.message_id for message in dead} & set(ids), "none dead-lettered"

    arrivals = [request.t for request in sim.requests(kind="api")]
    assert min(arrivals) < failover_at < max(arrivals) - 5.0, "the failover came mid-load"
    assert max_in_window(arrivals, 1.0) <= rate * 1.0 + burst
    assert max_in_window(arrivals, 5.0) <= rate * 5.0 + burst
    # The workers moved to the new master: the budget's state there is of its own epoch.
    new_master = Redis(host="127.0.0.1", port=replica.port)
    try:
        keys = [key async for key in new_master.scan_iter(match="itwin-test-*:limiter:*")]
        [limiter_key] = keys
        epoch = await new_master.hget(limiter_key, "epoch")
        replication = await new_master.info("replication")
        assert epoch is not None
        assert epoch == replication["master_replid"].encode()
        assert replication["role"] == "master"
    finally:
        await new_master.aclose()
