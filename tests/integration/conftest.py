"""Real parts for integration tests: a fresh RabbitMQ vhost, a Redis key prefix, the simulator.

Everything a run creates lives in its own vhost (deleted afterwards) and under its own Redis
prefix (deleted afterwards), so runs never see each other's queues or keys, nor a demo's.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from service.app import Worker
from service.producer import Producer
from service.settings import Settings
from service.simulator import SimulatorConfig, SimulatorHandle, running_simulator
from tests.support import (
    AMQP_BASE,
    REDIS_URL,
    RedisServers,
    SpawnWorkers,
    StartWorker,
    WorkerProcess,
    purge_work,
    rabbitmqctl,
    worker_settings,
)


# These tests drive a real broker, Redis servers and worker processes on a two-core machine, and
# some make outages last tens of seconds: one re-run tells a scheduling hiccup from a bug (a bug
# fails twice). Re-runs are reported (`R` in the progress line, and in the summary).
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))


@pytest.fixture
async def redis_servers(tmp_path: Path) -> AsyncIterator[RedisServers]:
    """Start Redis servers for this test; every one is stopped after it."""
    servers = RedisServers(tmp_path / "redis")
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
async def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The URL of one node of a three-primary Redis Cluster, shared by the session's tests
    (each under its own key prefix)."""
    servers = RedisServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        nodes = await servers.cluster(3)
        yield nodes[0].url
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    vhost = f"itwin-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{AMQP_BASE}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"itwin-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    async for key in redis.scan_iter(match=f"{prefix}:*"):
        await redis.delete(key)
    await redis.aclose()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """redis-py on the shared Redis, to run the scripts on and look at what they wrote."""
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture(params=["single", "cluster"])
def redis_settings(request: pytest.FixtureRequest, redis_prefix: str) -> dict[str, Any]:
    """Worker settings for a Redis shared by replicas under a fresh key prefix: the test runs
    once on the plain Redis, once on a Redis Cluster."""
    settings: dict[str, Any] = {"redis_prefix": f"{redis_prefix}:{uuid.uuid4().hex}"}
    if request.param == "cluster":
        return {**settings, "redis_url": request.getfixturevalue("redis_cluster"),
                "redis_cluster": True}  # fmt: skip
    return {**settings, "redis_url": REDIS_URL}


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorHandle]:
    with running_simulator(SimulatorConfig()) as handle:
        yield handle


@pytest.fixture
def sim(simulator: SimulatorHandle) -> SimulatorHandle:
    """The session's simulator, reset to its start state for this test."""
    simulator.reset()
    return simulator


@pytest.fixture
async def start_worker(amqp_url: str, sim: SimulatorHandle) -> AsyncIterator[StartWorker]:
    """Start in-process workers with the test's settings; all are stopped after the test,
    and the work they leave behind is purged."""
    used: list[Settings] = []
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Worker:
            settings = worker_settings(amqp_url, sim, **overrides)
            used.append(settings)
            worker = Worker(settings)
            await worker.start()
            stack.push_async_callback(worker.stop)
            return worker

        yield start
    await purge_work(used)


@pytest.fixture
async def producer(amqp_url: str, start_worker: StartWorker) -> AsyncIterator[Producer]:
    """A producer on the test vhost; the default worker is already declaring the topology."""
    await start_worker()
    async with Producer(amqp_url, "itwin.commands") as client:
        yield client


@pytest.fixture
async def spawn_workers(
    amqp_url: str, sim: SimulatorHandle, tmp_path: Path
) -> AsyncIterator[SpawnWorkers]:
    """Start `count` worker processes with the same settings; all are stopped after the test."""
    started: list[WorkerProcess] = []

    async def spawn(count: int, **overrides: Any) -> list[WorkerProcess]:
        settings = worker_settings(amqp_url, sim, log_format="json", **overrides)
        batch = [
            WorkerProcess(settings, tmp_path / f"worker-{len(started) + i}.log")
            for i in range(count)
        ]
        started.extend(batch)
        for worker in batch:
            await worker.ready()
        return batch

    yield spawn
    for worker in started:
        worker.stop()
    await purge_work([worker.settings for worker in started])
