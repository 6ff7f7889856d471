"""Shared parts of the benchmarks: an isolated broker vhost and Redis prefix, the simulator as a
subprocess, child processes watched through /proc, the backlog publisher and the event counter.

Everything a run creates lives in its own RabbitMQ vhost (`bench-<random>`, deleted at the end)
and under its own Redis key prefix (`bench-<random>`, keys deleted at the end), also when the run
is interrupted. All traffic stays on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage
from faststream.rabbit import RabbitBroker
from redis.asyncio import Redis

from bench._variants import READY_MARKER
from service.commands import COMMANDS, CommandSpec
from service.producer import Producer
from service.settings import Settings, load_settings
from service.simulator import SimulatorConfig
from service.topology import Topology
from tests import support
from tests.support import free_port, rabbitmqctl

AMQP_BASE = os.environ.get("ITWIN_BENCH_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
REDIS_URL = os.environ.get("ITWIN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROUTING_KEY = "workspace.create"
COMMAND_BODY = b'{"name": "w"}'


def command_body(routing_key: str) -> bytes:
    """A body for one backlog command: workspaces may share a name, applications may not (a
    second one of a name and version is refused with 409)."""
    if routing_key == "application.create":
        return json.dumps({"displayName": f"bench-{uuid.uuid4().hex}", "version": "1"}).encode()
    return COMMAND_BODY


BACKLOG_COMMANDS = ("workspace.create", "application.create")

REPO = Path(__file__).resolve().parents[1]
PYCACHE_DIR = Path(tempfile.gettempdir()) / "itwin-bench-pycache"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, stamped with seconds since the benchmark started."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def random_name() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}"


def run_bench(run: Coroutine[Any, Any, bool]) -> int:
    """A benchmark's exit code: 0 when `run` says all went as it should, 1 when not, 2 on an
    error it reported, 130 when interrupted (SIGTERM unwinds like Ctrl-C: every cleanup runs)."""
    terminate_on_sigterm()
    try:
        return 0 if asyncio.run(run) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc!r}", file=sys.stderr)
        return 2


def terminate_on_sigterm() -> None:
    """Let SIGTERM unwind like Ctrl-C, so every `finally` (vhost, keys, children) still runs."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


# --- isolation -----------------------------------------------------------------------------


@contextlib.contextmanager
def bench_vhost() -> Iterator[str]:
    """A fresh vhost for this run; yields its AMQP URL and deletes the vhost afterwards."""
    vhost = random_name()
    rabbitmqctl("add_vhost", vhost)
    progress(f"created vhost {vhost}")
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{AMQP_BASE}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)
        progress(f"deleted vhost {vhost}")


@contextlib.asynccontextmanager
async def bench_redis_prefix(url: str = REDIS_URL) -> AsyncIterator[tuple[str, Redis]]:
    """A fresh Redis key prefix (and a client); every `<prefix>:*` key is deleted afterwards."""
    prefix = random_name()
    redis = Redis.from_url(url)
    try:
        await redis.ping()
        yield prefix, redis
    finally:
        deleted = 0
        async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
            deleted += await redis.delete(key)
        await redis.aclose()
        progress(f"deleted {deleted} Redis keys under {prefix}:")


def broker_pid() -> int | None:
    """The RabbitMQ node's OS pid (to read its CPU time), or None if rabbitmqctl cannot say."""
    try:
        return int(rabbitmqctl("eval", "os:getpid().").strip().strip('"'))
    except (subprocess.SubprocessError, ValueError, OSError):
        return None


_ROUND_TRIP_COMMANDS = ("evalsha", "eval", "ping", "script", "hello", "client", "select", "auth")
"""What a client sends itself; the commands its scripts run (get, set, ...) count too in Redis's
`commandstats`, but are no round trip (the worker sends nothing else directly)."""


async def redis_round_trips(redis: Redis) -> int:
    """Round trips clients made to this Redis so far (the bench's own INFO excluded)."""
    stats = await redis.info("commandstats")
    names = {f"cmdstat_{name}" for name in _ROUND_TRIP_COMMANDS}
    return sum(int(entry["calls"]) for name, entry in stats.items() if name in names)


async def redis_pid(redis: Redis) -> int | None:
    info = await redis.info("server")
    pid = info.get("process_id")
    return int(pid) if pid is not None else None


# --- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds the process has used so far (0.0 if it is gone or unknown)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5), counted from the state field (field 3) here.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def busy_cpu_seconds() -> float:
    """CPU seconds all CPUs of the machine have been busy (not idle, not iowait) since boot."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


# --- processes -----------------------------------------------------------------------------


def clean_environment() -> dict[str, str]:
    """This process's environment without ITWIN_WORKER_* variables, with a bytecode cache.

    A deployed worker starts from compiled bytecode (the image compiles it at build time). Here
    PYTHONDONTWRITEBYTECODE may be set and the checkout has no `.pyc` files, so every child
    would compile its imports from source at start. Children therefore keep their bytecode under
    PYCACHE_DIR (PYTHONPYCACHEPREFIX), outside the repository and the venv.
    """
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ITWIN_WORKER_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    environment["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
    return environment


class ChildProcess:
    """A child process whose output goes to a log file; knows when it was started."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path = REPO
    ) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    async def ready(self, marker: str = READY_MARKER, within: float = 30.0) -> float:
        """Wait for `marker` in the log; return seconds from spawn until it was seen (±10 ms)."""
        async with asyncio.timeout(within):
            while marker not in self.log():
                if not self.alive():
                    raise RuntimeError(
                        f"{self.log_path.name} exited {self.process.returncode}:\n{self.log()}"
                    )
                await asyncio.sleep(0.01)
        return time.monotonic() - self.started

    def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL; returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


@contextlib.contextmanager
def stopping(processes: Sequence[ChildProcess]) -> Iterator[None]:
    """Stop every process on the way out, whatever happened."""
    try:
        yield
    finally:
        for process in processes:
            process.stop()


class Simulator:
    """`itwin-worker simulator` in its own process (its CPU stays off the measured process)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.token_url = f"{self.base_url}/connect/token"
        self.client_id, self.client_secret = next(iter(SimulatorConfig().clients.items()))
        argv = [sys.executable, "-m", "service.cli", "simulator"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.child = ChildProcess(argv, clean_environment(), workdir / "simulator.log")
        self.pid = self.child.pid
        self._admin = httpx.Client(base_url=f"{self.base_url}/_simulator", timeout=30.0)

    def __enter__(self) -> Simulator:
        try:
            self._wait_until_up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._admin.close()
        self.child.stop()

    def _wait_until_up(self, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise RuntimeError(f"the simulator exited:\n{self.child.log()}")
            try:
                self._admin.get("/config").raise_for_status()
            except httpx.HTTPError:
                time.sleep(0.05)
            else:
                return
        raise TimeoutError("the simulator did not answer within 20 s")

    def reset(self, latency_ms: float) -> None:
        """Back to the start state (no objects, no tokens, empty log), with this API latency."""
        self._admin.post("/reset").raise_for_status()
        self._admin.patch("/config", json={"latency_ms": latency_ms}).raise_for_status()

    def configure(self, **fields: Any) -> None:
        """Change the simulator's knobs live (`time_scale`, `job_duration_seconds`, ...)."""
        self._admin.patch("/config", json=fields).raise_for_status()

    def clear_requests(self) -> None:
        """Empty the request log, keeping every object (workspaces, jobs)."""
        self._admin.delete("/requests").raise_for_status()

    def request_log(self, kind: str = "api") -> list[tuple[float, str, str]]:
        """(arrival time, method, path) of each logged request."""
        response = self._admin.get("/requests", params={"kind": kind})
        response.raise_for_status()
        entries = response.json()["requests"]
        return [(float(entry["t"]), entry["method"], entry["path"]) for entry in entries]

    def requests(self, kind: str = "api") -> list[tuple[float, int | None]]:
        """(arrival time as the simulator's `time.time()`, HTTP status) of each logged request."""
        response = self._admin.get("/requests", params={"kind": kind})
        response.raise_for_status()
        return [(float(entry["t"]), entry["status"]) for entry in response.json()["requests"]]


# --- the worker ----------------------------------------------------------------------------


def worker_settings(amqp_url: str, simulator: Simulator, **overrides: Any) -> Settings:
    """Settings for `itwin-worker run` against this vhost and simulator (JSON logs, INFO)."""
    return load_settings(
        **{
            "amqp_url": amqp_url,
            "api_base_url": simulator.base_url,
            "token_url": simulator.token_url,
            "client_id": simulator.client_id,
            "client_secret": simulator.client_secret,
            "log_format": "json",
            "log_level": "INFO",
            "http_port": free_port(),
            "shutdown_grace_seconds": 5.0,
            **overrides,
        }
    )


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment that gives `itwin-worker run` exactly these settings, with the bench's
    bytecode cache (`clean_environment`)."""
    return support.worker_environment(settings, clean_environment())


def spawn_worker(
    settings: Settings,
    log_path: Path,
    source: Path | None = None,
    extra_environment: dict[str, str] | None = None,
) -> ChildProcess:
    """`itwin-worker run` with these settings (and variables the SDK reads itself, such as
    OTEL_TRACES_SAMPLER); from `source` (a directory holding another version's `service/`
    package, e.g. `git archive <commit> service | tar -x -C DIR`) if given, else from this
    checkout."""
    argv = [sys.executable, "-m", "service.cli", "run"]
    environment = worker_environment(settings) | (extra_environment or {})
    if source is None:
        return ChildProcess(argv, environment, log_path)
    environment |= {"PYTHONPATH": str(source)}
    return ChildProcess(argv, environment, log_path, cwd=source)


def command_spec(routing_key: str = ROUTING_KEY) -> CommandSpec:
    return next(spec for spec in COMMANDS if spec.routing_key == routing_key)


async def declare_topology(settings: Settings, routing_key: str = ROUTING_KEY) -> str:
    """Declare, exactly as the worker does, the command and event exchanges and the command's
    quorum queue with its binding, so a backlog can wait for the worker.

    Returns the command queue's name.
    """
    topology = Topology.from_settings(settings)
    queue = topology.command_queue(command_spec(routing_key))
    broker = RabbitBroker(settings.amqp_url, logger=None)
    await broker.connect()
    try:
        commands = await broker.declare_exchange(topology.commands)
        await broker.declare_exchange(topology.events)
        declared = await broker.declare_queue(queue)
        await declared.bind(commands, routing_key=routing_key)
    finally:
        await broker.stop()
    return queue.name


async def publish_backlog(
    producer: Producer,
    count: int,
    *,
    reply: bool = False,
    chunk: int = 250,
    routing_key: str = ROUTING_KEY,
) -> list[str]:
    """Publish `count` commands (persistent, confirmed, `chunk` in flight).

    Returns their message ids, in publishing order.
    """
    ids: list[str] = []
    while len(ids) < count:
        size = min(chunk, count - len(ids))
        batch = [
            producer.publish(routing_key, command_body(routing_key), reply=reply)
            for _ in range(size)
        ]
        ids += await asyncio.gather(*batch)
    return ids


async def queue_depth(amqp_url: str, queue: str) -> int:
    """Messages ready in a queue (quorum counts may lag a little behind)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.get_queue(queue, ensure=True)
        result = await declared.declare()
        return int(result.message_count or 0)


async def purge_queue(amqp_url: str, queue: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.get_queue(queue, ensure=True)
        await declared.purge()


# --- observing events ----------------------------------------------------------------------


Probe = Callable[[], Any]


@dataclass
class _Round:
    expected: int
    probe: Probe
    done: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0
    first: tuple[float, Any] | None = None
    last: tuple[float, Any] | None = None


class EventCounter:
    """Counts the events on the event exchange (an exclusive queue bound with `#`).

    For each round it records the time (`time.monotonic()`) of the first and of the `expected`th
    event, and calls `probe` at both moments, so a caller can snapshot CPU counters exactly
    over the window in which the events arrived.
    """

    def __init__(self, amqp_url: str, event_exchange: str) -> None:
        self._url = amqp_url
        self._exchange = event_exchange
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._round: _Round | None = None

    async def __aenter__(self) -> EventCounter:
        self._connection = await aio_pika.connect(self._url)
        channel = await self._connection.channel()
        exchange = await channel.get_exchange(self._exchange, ensure=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._on_event, no_ack=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()

    def _lost(self) -> bool:
        return self._connection is None or self._connection.is_closed

    def start_round(self, expected: int, probe: Probe) -> None:
        self._round = _Round(expected, probe)

    @property
    def count(self) -> int:
        return self._round.count if self._round else 0

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        current = self._round
        if current is None:
            return
        current.count += 1
        if current.count == 1:
            current.first = (time.monotonic(), current.probe())
            current.started.set()
        if current.count == current.expected:
            current.last = (time.monotonic(), current.probe())
            current.done.set()

    async def finish_round(
        self, within: float, alive: Callable[[], bool], stall: float = 30.0
    ) -> tuple[tuple[float, Any], tuple[float, Any]]:
        """Wait for the round's last event; return (time, probe) at the first and the last.

        Gives up (TimeoutError) after `within` seconds, or as soon as the consumer is not
        `alive`, the observer lost the broker, or no event came for `stall` seconds.
        """
        current = self._round
        assert current is not None, "start_round first"
        deadline = time.monotonic() + within
        seen, last_change = current.count, time.monotonic()
        while not current.done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await current.done.wait()
            now = time.monotonic()
            if current.count != seen:
                seen, last_change = current.count, now
            if self._lost() or not alive() or now > deadline or now - last_change > stall:
                raise TimeoutError
        assert current.first is not None
        assert current.last is not None
        return current.first, current.last

    async def first_event(self, within: float) -> float:
        """Wait for the round's first event; return its time (`time.monotonic()`)."""
        current = self._round
        assert current is not None, "start_round first"
        async with asyncio.timeout(within):
            await current.started.wait()
        assert current.first is not None
        return current.first[0]


# --- statistics ----------------------------------------------------------------------------
