"""Issue 23 acceptance on a real three-node RabbitMQ cluster behind one address: the node that
holds the workers' connections (and the queue leaders) dies with SIGKILL mid-load, and every
node is restarted one after the other (a rolling upgrade). Every command is answered with its
true outcome, no POST leaves twice, nothing is dead-lettered, the workers live on.

The cluster (`tests/rabbit_cluster.py`) is this module's own, started once for its tests; each
test gets a fresh vhost on it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from service.simulator import SimulatorHandle
from tests.rabbit_cluster import RabbitCluster
from tests.support import REDIS_URL, WorkerProcess, sent_twice, worker_settings

pytestmark = pytest.mark.slow

COMMANDS = 400
SINK = "test.events"


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    cluster = RabbitCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(rabbit_cluster: RabbitCluster) -> Iterator[str]:
    vhost = f"itwin-test-{uuid.uuid4().hex[:10]}"
    rabbit_cluster.ctl("add_vhost", vhost)
    try:
        rabbit_cluster.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield rabbit_cluster.url(vhost)
    finally:
        # A node the test killed comes back first: its queue replicas go with the vhost.
        for node in rabbit_cluster.nodes:
            if node.pid is None:
                node.start()
        rabbit_cluster.ctl("delete_vhost", vhost)


@pytest.fixture
async def workers(
    cluster_url: str, sim: SimulatorHandle, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[list[WorkerProcess]]:
    """Two worker processes on the cluster, sharing Redis; a sink queue of every event."""
    settings = worker_settings(
        cluster_url,
        sim,
        log_format="json",
        redis_url=REDIS_URL,
        redis_prefix=f"{redis_prefix}:{uuid.uuid4().hex}",
        rate_limit_per_second=80.0,
        rate_limit_burst=10,
    )
    started = [WorkerProcess(settings, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        for worker in started:
            await worker.ready(within=60)
        connection = await aio_pika.connect(cluster_url)
        async with connection:
            channel = await connection.channel()
            sink = await channel.declare_queue(
                SINK, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await sink.bind("itwin.events", routing_key="#")
        yield started
    finally:
        for worker in started:
            worker.stop()


async def publish(url: str, count: int) -> dict[str, str]:
    """`count` application.create commands; their ids and display names."""
    names = {str(uuid.uuid4()): f"app-{uuid.uuid4().hex}" for _ in range(count)}
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("itwin.commands")
        for command_id, name in names.items():
            body = json.dumps({"displayName": name, "version": "1"}).encode()
            await exchange.publish(
                aio_pika.Message(
                    body,
                    message_id=command_id,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="application.create",
            )
    return names


class Sink:
    """Every event the sink queue holds, read through the cluster's front (reconnecting)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[dict[str, Any]] = []

    async def until_answered(self, ids: set[str], within: float) -> set[str]:
        answered: set[str] = set()
        async with asyncio.timeout(within):
            while not ids <= answered:
                try:
                    await self._read()
                except (ConnectionError, OSError, aio_pika.exceptions.AMQPError):
                    await asyncio.sleep(0.5)
                answered = {event["commandId"] for event in self.events}
        return answered

    async def _read(self, quiet: float = 1.0) -> None:
        connection = await aio_pika.connect(self.url, timeout=5)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(SINK, ensure=True)
            while True:
                message = await queue.get(fail=False, timeout=5)
                if message is None:
                    await asyncio.sleep(quiet)
                    if (message := await queue.get(fail=False, timeout=5)) is None:
                        return
                self.events.append(json.loads(message.body))
                await message.ack()


async def dead_letters(url: str, ids: set[str]) -> list[str]:
    """Our commands in the dead-letter queue (read and acked)."""
    found: list[str] = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue("itwin-worker.dlq", ensure=True)
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            if message.message_id in ids:
                found.append(str(message.message_id))
            await message.ack()
    return found


async def until_in_flight(sim: SimulatorHandle, at_least: int) -> None:
    async with asyncio.timeout(60):
        while len(sim.requests(kind="api")) < at_least:
            await asyncio.sleep(0.1)


def check_outcomes(
    sim: SimulatorHandle, sink: Sink, names: dict[str, str], workers: list[WorkerProcess]
) -> None:
    by_command: dict[str, list[dict[str, Any]]] = {}
    for event in sink.events:
        by_command.setdefault(event["commandId"], []).append(event)
    assert set(by_command) == set(names)
    types = Counter(events[0]["type"] for events in by_command.values())
    assert types == {"application.created": len(names)}, types
    for events in by_command.values():
        assert all(event == events[0] for event in events), "repeats are the same event"
    posts = [r for r in sim.requests(kind="api") if r.method == "POST"]
    assert len(posts) == len(names), "every POST left exactly once"
    assert sent_twice(sim) == []
    assert {r.status for r in posts} == {201}
    assert all(worker.process.poll() is None for worker in workers), "the workers live on"


async def test_the_connections_node_killed_mid_load(
    rabbit_cluster: RabbitCluster,
    cluster_url: str,
    sim: SimulatorHandle,
    workers: list[WorkerProcess],
) -> None:
    # 80 calls/s, each answered in 1 s: some 80 POSTs are out when the node dies.
    sim.configure(latency_ms=1000)
    names = await publish(cluster_url, COMMANDS)
    await until_in_flight(sim, 120)
    await asyncio.to_thread(rabbit_cluster.connection_node().kill)
    sink = Sink(cluster_url)
    await sink.until_answered(set(names), within=150)
    assert await dead_letters(cluster_url, set(names)) == []
    check_outcomes(sim, sink, names, workers)


async def test_a_rolling_restart_of_every_node(
    rabbit_cluster: RabbitCluster,
    cluster_url: str,
    sim: SimulatorHandle,
    workers: list[WorkerProcess],
) -> None:
    sim.configure(latency_ms=500)
    names = await publish(cluster_url, COMMANDS)
    await until_in_flight(sim, 40)
    for node in rabbit_cluster.nodes:
        await asyncio.to_thread(node.stop)
        await asyncio.to_thread(node.start)
    sink = Sink(cluster_url)
    await sink.until_answered(set(names), within=180)
    assert await dead_letters(cluster_url, set(names)) == []
    check_outcomes(sim, sink, names, workers)
