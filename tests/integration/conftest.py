"""Real parts for integration tests: a fresh RabbitMQ vhost, a Redis key prefix, the simulator.

Everything a run creates lives in its own vhost (deleted afterwards) and under its own Redis
prefix (deleted afterwards), so runs never see each other's queues or keys, nor a demo's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from redis.asyncio import Redis

from service.app import Worker
from service.producer import Producer
from service.redis_scripts import ScriptConnection
from service.settings import Settings, load_settings
from service.simulator import SimulatorConfig, SimulatorHandle, running_simulator

AMQP_BASE = os.environ.get("ITWIN_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
REDIS_URL = os.environ.get("ITWIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    """A local TCP port nobody listens on (bound and released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    vhost = f"itwin-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{AMQP_BASE}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


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
    """redis-py, to look at what the worker's own connection wrote."""
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def scripts() -> AsyncIterator[ScriptConnection]:
    """The worker's own Redis connection."""
    connection = ScriptConnection(REDIS_URL)
    yield connection
    await connection.aclose()


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorHandle]:
    with running_simulator(SimulatorConfig()) as handle:
        yield handle


@pytest.fixture
def sim(simulator: SimulatorHandle) -> SimulatorHandle:
    """The session's simulator, reset to its start state for this test."""
    simulator.reset()
    return simulator


def worker_settings(amqp_url: str, simulator: SimulatorHandle, **overrides: Any) -> Settings:
    return load_settings(
        **{
            "amqp_url": amqp_url,
            "api_base_url": simulator.base_url,
            "token_url": simulator.token_url,
            "client_id": simulator.client_id,
            "client_secret": simulator.client_secret,
            "rate_limit_per_second": 1000.0,
            "rate_limit_burst": 100,
            "retry_initial_seconds": 0.01,
            "retry_max_seconds": 0.05,
            "default_retry_after_seconds": 0.5,
            "log_format": "console",
            "http_host": "127.0.0.1",
            "http_port": 0,
            "shutdown_grace_seconds": 5.0,
            # Retriable failures are final at once unless a test is about delayed redelivery.
            "retry_delays": [],
            "idempotency_lease_seconds": 3.0,
            **overrides,
        }
    )


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(amqp_url: str, sim: SimulatorHandle) -> AsyncIterator[StartWorker]:
    """Start in-process workers with the test's settings; all are stopped after the test."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Worker:
            worker = Worker(worker_settings(amqp_url, sim, **overrides))
            await worker.start()
            stack.push_async_callback(worker.stop)
            return worker

        yield start


@pytest.fixture
async def producer(amqp_url: str, start_worker: StartWorker) -> AsyncIterator[Producer]:
    """A producer on the test vhost; the default worker is already declaring the topology."""
    await start_worker()
    async with Producer(amqp_url, "itwin.commands") as client:
        yield client


async def drain_queue(amqp_url: str, queue: str, quiet: float = 1.0) -> list[Any]:
    """Consume a queue until it stays empty for `quiet` seconds; quorum counts lag, so count.

    A consumer feeding a local queue, so the timeout never cancels an AMQP call half-way.
    """
    received: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    messages: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.get_queue(queue, ensure=True)
        await declared.consume(received.put, no_ack=True)
        while True:
            try:
                async with asyncio.timeout(quiet):
                    messages.append(await received.get())
            except TimeoutError:
                return messages


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment that gives `itwin-worker run` exactly these settings."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ITWIN_WORKER_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            environment[f"ITWIN_WORKER_{name.upper()}"] = text
    secret = settings.client_secret
    if secret is not None:
        environment["ITWIN_WORKER_CLIENT_SECRET"] = secret.get_secret_value()
    return environment


class WorkerProcess:
    """`itwin-worker run` as a subprocess, its log kept in a file for the test to read."""

    def __init__(self, settings: Settings, log_path: Any) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "run"],
            env=worker_environment(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    async def ready(self, within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while "worker consuming" not in self.log():
                if self.process.poll() is not None:
                    raise RuntimeError(f"worker exited {self.process.returncode}:\n{self.log()}")
                await asyncio.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


SpawnWorkers = Callable[..., Awaitable[list[WorkerProcess]]]


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
