"""Helpers the tests and the benchmarks share: free ports, `rabbitmqctl`, Redis servers a test
starts for itself, the worker's settings and environment for a test, worker processes and their
memory, queues drained to the end. Fixtures stay in the conftest
files; everything else is here, in one module.

Everything a run creates lives in its own vhost and under its own Redis prefix; every process a
helper starts is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import aio_pika
import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from service.app import Worker
from service.commands import COMMANDS
from service.producer import Producer
from service.settings import Settings, load_settings
from service.simulator import SimulatorHandle
from service.topology import Topology

CLUSTER_BUS_OFFSET = 10_000  # Redis Cluster's node-to-node port is the client port + 10 000


def free_port(*, with_bus: bool = False) -> int:
    """A local TCP port nobody listens on (bound and released at once); `with_bus`: its Redis
    Cluster bus port too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if not with_bus:
            return port
        if port + CLUSTER_BUS_OFFSET < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
                except OSError:
                    continue
            return port


def rabbitmqctl(*args: str) -> str:
    """Run `rabbitmqctl -q ARGS` (root on this machine); its output, or CalledProcessError."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


def worker_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) without any ITWIN_WORKER_* variable, plus
    the variables that give `itwin-worker run` exactly these settings."""
    source = os.environ if base is None else base
    environment = {k: v for k, v in source.items() if not k.startswith("ITWIN_WORKER_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            # OpenTelemetry's variables keep their standard names (no prefix).
            prefix = "" if name.startswith("otel_") else "ITWIN_WORKER_"
            environment[f"{prefix}{name.upper()}"] = text
    secret = settings.client_secret
    if secret is not None:
        environment["ITWIN_WORKER_CLIENT_SECRET"] = secret.get_secret_value()
    return environment


AMQP_BASE = os.environ.get("ITWIN_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")


REDIS_URL = os.environ.get("ITWIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class RedisServer:
    """One `redis-server` (or sentinel) process; its log is `<dir>/server.log`."""

    def __init__(self, directory: Path, arguments: list[str], port: int) -> None:
        self.directory = directory
        self.port = port
        self.log_path = directory / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["redis-server", *arguments],
            cwd=directory,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port)

    async def ready(self, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()}")
                client = self.client()
                try:
                    if await client.ping():
                        return
                except (RedisError, OSError):
                    await asyncio.sleep(0.05)
                finally:
                    await client.aclose()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): its sockets stay open, nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Die at once (SIGKILL), as on a crash: no last write, no goodbye to the cluster."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()  # a paused server handles its SIGTERM only once it runs again
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class RedisServers:
    """Starts servers under `root`; `stop()` stops every one still running."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.started: list[RedisServer] = []

    def _directory(self, kind: str) -> Path:
        directory = self._root / f"{kind}-{len(self.started)}"
        directory.mkdir(parents=True)
        return directory

    async def server(self, *extra: str, port: int | None = None) -> RedisServer:
        """A Redis with no persistence; `extra` are further `--option value` arguments."""
        port = port or free_port()
        directory = self._directory("redis")
        arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        server = RedisServer(directory, [*arguments, "--dir", str(directory), *extra], port)
        self.started.append(server)
        await server.ready()
        return server

    async def replica(self, primary: RedisServer) -> RedisServer:
        replica = await self.server("--replicaof", "127.0.0.1", str(primary.port))
        client = replica.client()
        try:
            async with asyncio.timeout(10):
                while (await client.info("replication")).get("master_link_status") != "up":
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        return replica

    async def sentinel(self, master_name: str, primary: RedisServer, quorum: int) -> RedisServer:
        """A sentinel watching `primary` (it rewrites its generated config file as it goes)."""
        port = free_port()
        directory = self._directory("sentinel")
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {primary.port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} 1000\n"
            f"sentinel failover-timeout {master_name} 10000\n"
        )
        server = RedisServer(directory, [str(config), "--sentinel"], port)
        self.started.append(server)
        await server.ready()
        return server

    async def cluster(
        self,
        primaries: int = 3,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        ports: Sequence[int] = (),
    ) -> list[RedisServer]:
        """A Redis Cluster of `primaries` nodes with `replicas` replicas each, every slot
        served; the primaries first in the list. `ports` (from `free_port(with_bus=True)`)
        when the test named the nodes' addresses before they existed."""
        options = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms)]
        count = primaries * (1 + replicas)
        ports = list(ports) or [free_port(with_bus=True) for _ in range(count)]
        nodes = [await self.server(*options, port=port) for port in ports[:count]]
        create = await asyncio.create_subprocess_exec(
            "redis-cli", "--cluster", "create", *(node.address for node in nodes),
            "--cluster-replicas", str(replicas), "--cluster-yes",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await create.communicate()
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output.decode()}")
        async with asyncio.timeout(30):
            for node in nodes:
                # Every node must know every slot's owner before a client asks it, and a
                # replica must be in sync before its primary may fail.
                while not await _cluster_node_ready(node):
                    await asyncio.sleep(0.1)
        return nodes

    def stop(self) -> None:
        for server in self.started:
            server.stop()


async def _cluster_node_ready(node: RedisServer) -> bool:
    client = node.client()
    try:
        info: dict[str, str] = await client.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER INFO"
        )
        replication = await client.info("replication")
    finally:
        await client.aclose()
    in_sync = replication["role"] == "master" or replication["master_link_status"] == "up"
    return info.get("cluster_state") == "ok" and in_sync


async def cluster_primary_of(nodes: Sequence[RedisServer], key: str) -> RedisServer:
    """The node serving `key`'s hash slot now, as the cluster's nodes agree."""
    slot = key_slot(key.encode())
    client = nodes[0].client()
    try:
        ranges = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()
    [port] = [int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1])]
    [node] = [node for node in nodes if node.port == port]
    return node


async def cluster_replica_of(nodes: Sequence[RedisServer], primary: RedisServer) -> RedisServer:
    """The replica that follows `primary`."""
    for node in nodes:
        client = node.client()
        try:
            replication = await client.info("replication")
        finally:
            await client.aclose()
        if replication["role"] == "slave" and int(replication["master_port"]) == primary.port:
            return node
    raise LookupError(f"no replica follows {primary.address}")


class ApiEndpoints(Protocol):
    """Where an API (the simulator, or a stand-in) and its token endpoint are, whom it accepts."""

    @property
    def base_url(self) -> str: ...
    @property
    def token_url(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def client_secret(self) -> str: ...


def worker_settings(amqp_url: str, simulator: ApiEndpoints, **overrides: Any) -> Settings:
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


async def purge_work(used: Sequence[Settings]) -> None:
    """Empty the work queues the `used` settings name (commands, job polls, the delays in
    between), each queue once however many workers shared it.

    The session's vhost outlives each test: a job a test left followed would otherwise be
    polled by the next test's worker, against that test's simulator.
    """
    queues: dict[str, set[str]] = {}
    for settings in used:
        topology = Topology.from_settings(settings)
        queues.setdefault(settings.amqp_url, set()).update(
            {
                topology.poll_queue.name,
                topology.unrouted_queue.name,
                *(queue.name for _, queue in topology.delays.values()),
                *(topology.command_queue(spec).name for spec in COMMANDS),
            }
        )
    for amqp_url, names in queues.items():
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            for name in sorted(names):
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aio_pika.exceptions.ChannelClosed:
                    # Never declared under these settings: the refusal closed the channel.
                    channel = await connection.channel()
                    continue
                await queue.purge()


class WorkerProcess:
    """`itwin-worker run` as a subprocess, its log kept in a file for the test to read."""

    def __init__(self, settings: Settings, log_path: Any) -> None:
        self.settings = settings
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

    @property
    def http_port(self) -> int:
        """The port of `/readyz` and `/metrics` (the worker logs it once consuming; JSON logs)."""
        for line in self.log().splitlines():
            if line.startswith("{") and (entry := json.loads(line)).get("event") == (
                "worker consuming"
            ):
                return int(entry["http_port"])
        raise LookupError("the worker has not said where it listens")

    async def readiness(self) -> tuple[int, dict[str, bool]]:
        """`/readyz`: the status code and the checks."""
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(f"http://127.0.0.1:{self.http_port}/readyz")
        assert answer.status_code in (200, 503), f"/readyz: {answer.status_code} {answer.text}"
        return answer.status_code, answer.json()["checks"]

    async def metric(self, name: str, labels: Mapping[str, str]) -> float | None:
        """One sample of `/metrics`, None when absent."""
        async with httpx.AsyncClient(timeout=10) as client:
            page = (await client.get(f"http://127.0.0.1:{self.http_port}/metrics")).text
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                if sample.name == name and sample.labels == dict(labels):
                    return float(sample.value)
        return None

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


def status_mib(pid: int, key: str) -> float:
    """A `/proc/<pid>/status` size (VmRSS: resident now, VmHWM: peak resident) in MiB."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def max_in_window(times: Sequence[float], window: float) -> int:
    """The largest number of `times` inside any half-open window [t, t + window): what the
    budget's guarantee (at most R·W + B calls in any window W) is checked against."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0
    )


def percentile(values: Sequence[float], share: float) -> float:
    """The value below which `share` of `values` lie (nearest rank); NaN for none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def sent_twice(simulator: SimulatorHandle, method: str = "POST") -> list[str]:
    """Body digests of the `method` requests the simulator received more than once: a command
    whose request left twice (the tests give each command a body of its own)."""
    digests = Counter(
        entry.body_digest for entry in simulator.requests(kind="api") if entry.method == method
    )
    return [digest for digest, count in digests.items() if digest is not None and count > 1]


ITWIN = "60805594-3e04-43b5-8fd8-5ccae0de23cc"
"""An iTwin the simulator knows."""
REQUEST_TIMEOUT = 20.0


async def request(producer: Producer, routing_key: str, document: Any) -> dict[str, Any]:
    """Send one command as JSON and wait for its event."""
    async with asyncio.timeout(REQUEST_TIMEOUT):
        return await producer.request(routing_key, json.dumps(document).encode())


async def api_failure(
    producer: Producer,
    routing_key: str,
    document: Any,
    status: int,
    code: str,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Send a command the API refuses; check its failure event (one attempt, final); return
    the event's error object."""
    answer = await request(producer, routing_key, document)
    assert answer["type"] == f"{routing_key}.failed", answer
    error = answer["error"]
    assert (error["status"], error["code"], error["retriable"]) == (status, code, False), error
    if details is not None:
        assert error["details"] == details
    assert answer["attempts"] == 1
    return dict(error)
