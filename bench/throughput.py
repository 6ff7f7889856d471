"""How fast the worker drains a backlog, next to three baselines, on one broker and one stub.

`python -m bench.throughput [--commands 5000] [--repeat 3] [--latency-ms 0,50]
[--variants a,b,c,d] [--prefetch 32] [--quick] [--memory] [--worker-source DIR] [--tracing]`

Variants, each a fresh process consuming the same durable quorum queue (declared as the worker
declares it) with the same prefetch, publishing one persistent event with publisher confirms to
the `itwin.events` topic exchange, then acking:

- a: raw aio-pika, no HTTP: the broker-only ceiling (latency-independent, so measured once per
  repetition and shown in every latency's rows).
- b: raw aio-pika + plain httpx POST /contextcapture/workspaces to the simulator.
- c: a bare FastStream subscriber + plain httpx.
- d: `itwin-worker run` with everything on: validation, limiter in Redis (set not to bind:
  100 000/s, burst 1 000), JSON logs at INFO to a file, confirmed events. No OTEL_* variable:
  no exporter (trace context is still passed on).
- t (with `--tracing`, beside d in the same run): d with tracing on: OTEL_TRACES_SAMPLER=
  always_on and OTLP/HTTP to a local receiver process (`bench.otlp_sink`, which decodes every
  export). The table then also prints t - d: the consumer's CPU per command that tracing costs.

Per run: the simulator is reset and given the latency, the backlog is published (not timed),
then the consumer process is started. An observer queue bound to `itwin.events` sees every event.
Before the measured runs, each variant drains 100 commands once, unreported (warm-up: bytecode
cache, broker, simulator). Children keep bytecode in a cache under /tmp, as a deployed image has
it compiled (see `bench._common.clean_environment`).

Figures:
- cmd/s: (N - 1) / (time of the Nth event - time of the first event), as the observer sees them:
  the drain rate, excluding the process's start-up. Median over the repetitions.
- CPU s per 1 000 commands of each process (consumer, simulator, broker, Redis, and this bench
  process, which publishes nothing while measuring but runs the observer), from
  /proc/<pid>/stat utime + stime read at the first and the Nth event. Median.
- first event: seconds from spawning the consumer to the first event the observer sees
  (includes interpreter start-up, imports, connecting, declaring). ready: to its log line
  `worker consuming`.
- peak RSS: VmHWM of the consumer at the end of the run (MiB).
- ratios d/c, d/b, d/a of the median rates, per latency.

`--worker-source DIR` runs d from another version's `service/` package (for A/B between
commits: `git archive <commit> service | tar -x -C DIR`).

`--rate R` instead runs the worker alone at a real budget, as an operator would measure it from
outside: limiter on at R calls/s (burst `--burst`, default 10: the top tier is R = 83, B = 10),
a 3 000-command backlog of `--command` (default application.create, each with a name of its
own; or workspace.create), `--latency-ms` as given (default 50 here), one
run per latency, with a Redis server of the bench's own. It prints the worker's CPU as a share
of one core while it drains and per command, the Redis round trips per command (the commands
that Redis ran), and the budget's utilisation: API calls after the first `burst` ones, per
second between that call and the last, over R (as the simulator's request log sees them).

`--memory` instead drains a 10 000-command backlog with the worker alone and samples its VmRSS
every 100 ms: RSS at ready, steady state (median of the samples taken after 20 % of the backlog),
at the end, VmHWM, and the time to ready (must be under 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from bench._common import (
    BACKLOG_COMMANDS,
    REDIS_URL,
    ROUTING_KEY,
    ChildProcess,
    EventCounter,
    Simulator,
    bench_redis_prefix,
    bench_vhost,
    broker_pid,
    busy_cpu_seconds,
    clean_environment,
    cpu_seconds,
    declare_topology,
    progress,
    publish_backlog,
    purge_queue,
    queue_depth,
    redis_pid,
    redis_round_trips,
    spawn_worker,
    terminate_on_sigterm,
    worker_settings,
)
from bench._variants import Config
from bench.otlp_sink import READY as OTLP_READY
from bench.steps import step_table
from service.producer import Producer
from service.settings import Settings
from tests.support import RedisServers, free_port, status_mib

PY_SPY = Path(sys.executable).with_name("py-spy")
"""The sampling profiler of `--profile`, installed beside the interpreter (dev dependencies)."""
VARIANTS = ("a", "b", "c", "d")
TRACED = "t"
DESCRIPTION = {
    "a": "aio-pika, no HTTP (broker ceiling)",
    "b": "aio-pika + httpx",
    "c": "FastStream + httpx",
    "d": "itwin-worker, all features",
    TRACED: "itwin-worker, tracing on (OTLP)",
}
VARIANT_MODULE = {
    "a": ["bench._variants", "a"],
    "b": ["bench._variants", "b"],
    "c": ["bench._variant_faststream"],
}
READY_LIMIT_SECONDS = 2.0
WARM_UP_COMMANDS = 100
RSS_SAMPLE_SECONDS = 0.1
MACHINE = "machine"


@dataclass(frozen=True)
class Options:
    commands: int
    repeat: int
    latencies: tuple[float, ...]
    variants: tuple[str, ...]
    prefetch: int
    memory: bool
    worker_source: Path | None = None
    rate: float | None = None
    burst: int = 20
    tracing: bool = False
    command: str = ROUTING_KEY
    """The backlog's command (`--rate` only: the baselines speak workspace.create)."""
    profile: bool = False
    """`--rate`: sample the worker with py-spy while it drains; print where its CPU goes."""


@dataclass(frozen=True)
class Measurement:
    """One drain of one backlog by one consumer process."""

    variant: str
    latency_ms: float
    commands: int
    rate: float
    """Commands per second between the first and the last event."""
    cpu_per_1000: dict[str, float]
    """CPU seconds per 1 000 commands, by process, over the same window."""
    ready_s: float
    """Spawn to the `worker consuming` log line."""
    first_event_s: float
    """Spawn to the first event seen by the observer."""
    peak_rss_mib: float
    rss_samples: list[tuple[int, float]] = field(repr=False)
    """(events seen so far, VmRSS MiB), every 100 ms while draining."""
    ready_rss_mib: float
    other_load: float
    """Cores kept busy by processes outside the benchmark during the window (noise)."""
    rate_range: tuple[float, float] = (0.0, 0.0)
    """Slowest and fastest run, for medians."""
    redis_round_trips: int = 0
    """Round trips to the bench's Redis during the drain (`--rate`: a Redis of its own)."""
    profile: Path | None = None
    """py-spy's raw (collapsed) samples of the drain, with `--profile`."""


@dataclass
class Bench:
    """Everything one benchmark run shares: vhost, simulator, Redis prefix, observer."""

    options: Options
    amqp_url: str
    workdir: Path
    simulator: Simulator
    redis_prefix: str
    producer: Producer
    counter: EventCounter
    queue: str
    pids: dict[str, int | None]
    redis_url: str
    redis: Redis
    runs: int = 0
    otlp_endpoint: str | None = None
    """The local OTLP receiver of variant t (`--tracing`)."""

    def worker_settings(self) -> Settings:
        """Variant d: limiter in Redis (not binding unless `--rate`), JSON logs, the bench's
        prefetch."""
        rate = self.options.rate
        return worker_settings(
            self.amqp_url,
            self.simulator,
            rate_limit_per_second=rate or 100_000.0,
            rate_limit_burst=self.options.burst if rate else 1000,
            redis_url=self.redis_url,
            redis_prefix=self.redis_prefix,
            prefetch=self.options.prefetch,
        )

    def spawn(self, variant: str) -> ChildProcess:
        self.runs += 1
        log = self.workdir / f"run-{self.runs:03d}-{variant}.log"
        if variant == "d":
            return spawn_worker(self.worker_settings(), log, self.options.worker_source)
        if variant == TRACED:
            settings = self.worker_settings().model_copy(
                update={"otel_exporter_otlp_endpoint": self.otlp_endpoint}
            )
            sampler = {"OTEL_TRACES_SAMPLER": "always_on"}
            return spawn_worker(settings, log, self.options.worker_source, sampler)
        config = Config(
            amqp_url=self.amqp_url,
            queue=self.queue,
            event_exchange="itwin.events",
            prefetch=self.options.prefetch,
            api_url=self.simulator.base_url,
            token_url=self.simulator.token_url,
            client_id=self.simulator.client_id,
            client_secret=self.simulator.client_secret,
        )
        argv = [sys.executable, "-m", *VARIANT_MODULE[variant]]
        return ChildProcess(argv, clean_environment() | config.environment(), log)

    def cpu_snapshot(self, consumer: int) -> dict[str, float]:
        """CPU seconds so far of each process we run or use, and of the whole machine."""
        pids = self.pids | {"consumer": consumer}
        snapshot = {name: cpu_seconds(pid) for name, pid in pids.items()}
        snapshot[MACHINE] = busy_cpu_seconds()
        return snapshot

    async def warm_up(self, variants: Sequence[str]) -> None:
        """One small unreported run per variant, so every measured start finds its bytecode
        compiled (see `clean_environment`) and the broker and simulator warm."""
        for variant in variants:
            progress(f"warm-up: {variant}, {WARM_UP_COMMANDS} commands")
            await self.measure(variant, 0.0, WARM_UP_COMMANDS)
            await self.check_drained()

    async def measure(self, variant: str, latency_ms: float, count: int = 0) -> Measurement:
        """Publish the backlog, start the consumer, wait for every event, stop the consumer."""
        count = count or self.options.commands
        self.simulator.reset(latency_ms)
        await publish_backlog(self.producer, count, routing_key=self.options.command)
        round_trips_before = await redis_round_trips(self.redis)
        child = self.spawn(variant)
        self.counter.start_round(count, lambda: self.cpu_snapshot(child.pid))
        samples: list[tuple[int, float]] = []
        sampler = asyncio.create_task(self._sample_rss(child.pid, samples))
        try:
            ready_s = await child.ready()
            ready_rss = status_mib(child.pid, "VmRSS")
            first_at = await self.counter.first_event(within=30.0)
            profiler = await self._profile(child.pid, count) if self.options.profile else None
            (t0, cpu0), (t1, cpu1) = await self.counter.finish_round(
                within=60.0 + count / 20, alive=child.alive
            )
            if profiler is not None:
                await profiler.wait()
            peak = status_mib(child.pid, "VmHWM")
            round_trips = await redis_round_trips(self.redis) - round_trips_before
        except TimeoutError:
            tail = "\n".join(child.log().splitlines()[-20:])
            raise RuntimeError(
                f"{variant}: only {self.counter.count} of {count} events, "
                f"{len(self.simulator.requests('api'))} API calls (consumer "
                f"{'running' if child.alive() else 'exited'}); its log ends:\n{tail}"
            ) from None
        finally:
            sampler.cancel()
            child.stop()
        used = {k: cpu1[k] - cpu0[k] for k in cpu0}
        return Measurement(
            variant=variant,
            latency_ms=latency_ms,
            commands=count,
            rate=(count - 1) / (t1 - t0),
            cpu_per_1000={k: v * 1000 / (count - 1) for k, v in used.items() if k != MACHINE},
            other_load=_others(used) / (t1 - t0),
            ready_s=ready_s,
            first_event_s=first_at - child.started,
            peak_rss_mib=peak,
            rss_samples=samples,
            ready_rss_mib=ready_rss,
            redis_round_trips=round_trips,
            profile=self.workdir / f"profile-{self.runs:03d}.txt" if profiler else None,
        )

    async def _profile(self, pid: int, count: int) -> asyncio.subprocess.Process:
        """py-spy on the worker for most of the drain (it ends before the last command)."""
        seconds = max(2, int(0.8 * count / (self.options.rate or 100.0)))
        return await asyncio.create_subprocess_exec(
            str(PY_SPY), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
            "--format", "raw", "--output", str(self.workdir / f"profile-{self.runs:03d}.txt"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def _sample_rss(self, pid: int, samples: list[tuple[int, float]]) -> None:
        for _ in range(100_000):
            samples.append((self.counter.count, status_mib(pid, "VmRSS")))
            await asyncio.sleep(RSS_SAMPLE_SECONDS)

    async def check_drained(self) -> None:
        """The queue must be empty between runs; leftovers (a consumer that stopped before
        acking) are reported and purged so the next run starts from exactly its backlog."""
        left = 0
        for _ in range(30):  # quorum queue counts settle within a moment
            left = await queue_depth(self.amqp_url, self.queue)
            if not left:
                return
            await asyncio.sleep(0.1)
        progress(f"warning: {left} commands left in {self.queue} after a run; purging them")
        await purge_queue(self.amqp_url, self.queue)


def _others(used: dict[str, float]) -> float:
    """CPU seconds the machine spent on processes that are not ours."""
    ours = sum(seconds for name, seconds in used.items() if name != MACHINE)
    return max(used[MACHINE] - ours, 0.0)


@asynccontextmanager
async def open_bench(options: Options, amqp_url: str, workdir: Path) -> AsyncIterator[Bench]:
    """Simulator process, Redis prefix, topology, producer and observer, all torn down after."""
    async with AsyncExitStack() as stack:
        simulator = stack.enter_context(Simulator(workdir))
        redis_url = REDIS_URL
        if options.rate is not None:
            # A Redis of its own: its command count is the worker's round trips alone.
            servers = RedisServers(workdir / "redis")
            stack.callback(servers.stop)
            redis_url = (await servers.server()).url
        prefix, redis = await stack.enter_async_context(bench_redis_prefix(redis_url))
        settings = worker_settings(amqp_url, simulator)
        queue = await declare_topology(settings, options.command)
        producer = await stack.enter_async_context(Producer(amqp_url, settings.command_exchange))
        counter = await stack.enter_async_context(EventCounter(amqp_url, settings.event_exchange))
        pids = {
            "simulator": simulator.pid,
            "broker": broker_pid(),
            "redis": await redis_pid(redis),
            "bench": os.getpid(),
        }
        bench = Bench(
            options, amqp_url, workdir, simulator, prefix, producer, counter, queue, pids,
            redis_url, redis,
        )  # fmt: skip
        if TRACED in options.variants:
            port = free_port()
            sink = ChildProcess(
                [sys.executable, "-m", "bench.otlp_sink", str(port)],
                clean_environment(),
                workdir / "otlp-sink.log",
            )
            stack.callback(_stop_sink, sink)
            await sink.ready(OTLP_READY)
            bench.otlp_endpoint = f"http://127.0.0.1:{port}"
        yield bench


def _stop_sink(sink: ChildProcess) -> None:
    sink.stop()
    progress(f"otlp sink: {sink.log().strip().splitlines()[-1]}")


# --- the comparison -------------------------------------------------------------------------


async def run_comparison(bench: Bench) -> list[Measurement]:
    """Every variant at every latency, repetitions interleaved so drift hits all alike."""
    options = bench.options
    await bench.warm_up(options.variants)
    results: list[Measurement] = []
    for repetition in range(1, options.repeat + 1):
        for latency in options.latencies:
            for variant in options.variants:
                if variant == "a" and latency != options.latencies[0]:
                    continue
                progress(f"run {repetition}/{options.repeat}: {variant} at {latency:g} ms ...")
                result = await bench.measure(variant, latency)
                await bench.check_drained()
                progress(
                    f"  {result.rate:8.0f} cmd/s, consumer CPU "
                    f"{result.cpu_per_1000['consumer']:.2f} s/1000, "
                    f"first event after {result.first_event_s:.2f} s"
                )
                results.append(result)
    return results


def median_of(results: Sequence[Measurement], variant: str, latency: float) -> Measurement | None:
    """A synthetic measurement holding the medians of the matching runs (a: any latency)."""
    runs = [
        r for r in results if r.variant == variant and (variant == "a" or r.latency_ms == latency)
    ]
    if not runs:
        return None

    def med(values: Sequence[float]) -> float:
        return statistics.median(values)

    return Measurement(
        variant=variant,
        latency_ms=latency,
        commands=runs[0].commands,
        rate=med([r.rate for r in runs]),
        cpu_per_1000={k: med([r.cpu_per_1000[k] for r in runs]) for k in runs[0].cpu_per_1000},
        ready_s=med([r.ready_s for r in runs]),
        first_event_s=med([r.first_event_s for r in runs]),
        peak_rss_mib=med([r.peak_rss_mib for r in runs]),
        rss_samples=[],
        ready_rss_mib=med([r.ready_rss_mib for r in runs]),
        other_load=max(r.other_load for r in runs),
        rate_range=(min(r.rate for r in runs), max(r.rate for r in runs)),
    )


def print_comparison(options: Options, results: Sequence[Measurement]) -> None:
    print(
        f"\nthroughput: {options.commands} workspace.create commands per run, "
        f"prefetch {options.prefetch}, median of {options.repeat} run(s)"
    )
    if options.worker_source is not None:
        print(f"d runs the worker from {options.worker_source}, not from this checkout")
    print("cmd/s = (N-1) / (last event - first event) as seen by an observer on itwin.events")
    print("CPU = CPU seconds per 1000 commands over that window, per process (medians)")
    print("others = cores busy outside the benchmark during the window (worst run): noise")
    print("1st event = consumer spawn to first event; peak RSS = consumer VmHWM\n")
    header = (
        f"{'API':>6} {'variant':<36} {'cmd/s':>6} {'(min-max)':>11}  {'CPU: consumer':>13} "
        f"{'sim':>5} {'broker':>6} {'redis':>5} {'bench':>5} {'others':>6}  "
        f"{'1st event':>9} {'peak RSS':>8}"
    )
    print(header)
    print("-" * len(header))
    for latency in options.latencies:
        medians = {v: median_of(results, v, latency) for v in options.variants}
        for variant, m in medians.items():
            if m is not None:
                print(_row(latency, variant, m))
        print(_ratios(medians))
    _print_ready(options, results)


def _row(latency: float, variant: str, m: Measurement) -> str:
    cpu = m.cpu_per_1000
    label = f"{variant}: {DESCRIPTION[variant]}"
    low, high = m.rate_range
    return (
        f"{latency:>4g}ms {label:<36} {m.rate:>6.0f} {f'({low:.0f}-{high:.0f})':>11}  "
        f"{cpu['consumer']:>13.2f} {cpu['simulator']:>5.2f} {cpu['broker']:>6.2f} "
        f"{cpu['redis']:>5.2f} {cpu['bench']:>5.2f} {m.other_load:>6.2f}  "
        f"{m.first_event_s:>8.2f}s {m.peak_rss_mib:>5.0f}MiB"
    )


def _ratios(medians: dict[str, Measurement | None]) -> str:
    d = medians.get("d")
    if d is None:
        return ""
    parts = [
        f"d/{v} = {d.rate / m.rate:.2f}"
        for v in ("c", "b", "a")
        if (m := medians.get(v)) is not None
    ]
    traced = medians.get(TRACED)
    if traced is not None:
        # CPU seconds per 1 000 commands = milliseconds per command; in microseconds here.
        cost = (traced.cpu_per_1000["consumer"] - d.cpu_per_1000["consumer"]) * 1000
        parts.append(
            f"t/d = {traced.rate / d.rate:.2f}, tracing costs the worker {cost:+.0f} µs CPU "
            f"per command (off: {d.cpu_per_1000['consumer'] * 1000:.0f} µs, on: "
            f"{traced.cpu_per_1000['consumer'] * 1000:.0f} µs)"
        )
    return f"{'':>6} ratios: " + ", ".join(parts) + "\n"


def _print_ready(options: Options, results: Sequence[Measurement]) -> None:
    runs = [r for r in results if r.variant == "d"]
    if not runs:
        return
    worst_ready = max(r.ready_s for r in runs)
    worst_first = max(r.first_event_s for r in runs)
    verdict = "yes" if worst_first <= READY_LIMIT_SECONDS else "NO"
    print(
        f"worker start (d, worst of {len(runs)} runs): 'worker consuming' after "
        f"{worst_ready:.2f} s, first event after {worst_first:.2f} s; "
        f"ready within {READY_LIMIT_SECONDS:g} s: {verdict}"
    )


# --- at the budget -------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetRun:
    measurement: Measurement
    utilisation: float
    core_share: float


async def run_budget(bench: Bench) -> list[BudgetRun]:
    rate = bench.options.rate
    assert rate is not None
    variants = ["d", TRACED] if bench.options.tracing else ["d"]
    await bench.warm_up(variants)
    runs = []
    for latency, variant in itertools.product(bench.options.latencies, variants):
        progress(
            f"budget: {bench.options.commands} commands at {rate:g}/s, {latency:g} ms API, "
            f"{DESCRIPTION[variant]}"
        )
        result = await bench.measure(variant, latency)
        arrivals = sorted(t for t, _ in bench.simulator.requests("api"))
        await bench.check_drained()
        steady = arrivals[bench.options.burst :]
        utilisation = (len(steady) - 1) / ((steady[-1] - steady[0]) * rate)
        core_share = result.cpu_per_1000["consumer"] / 1000 * result.rate
        runs.append(BudgetRun(result, utilisation, core_share))
    return runs


def print_budget(options: Options, runs: Sequence[BudgetRun]) -> None:
    print(
        f"\nat the budget: itwin-worker alone, limiter in Redis at {options.rate:g} calls/s "
        f"(burst {options.burst}), {options.commands} {options.command} commands queued, "
        f"prefetch {options.prefetch}"
    )
    print("CPU share = the worker's CPU seconds per second of draining (1.0 = one core)")
    print("CPU ms/cmd = the worker's CPU per command while draining (/proc utime + stime)")
    print("Redis/cmd = round trips to its Redis per command (scripts, PINGs), whole run")
    print("utilisation = API calls per second after the burst, over the rate (simulator's log)")
    header = (
        f"{'API':>6} {'':>2} {'cmd/s':>7} {'CPU share':>10} {'CPU ms/cmd':>11} {'Redis/cmd':>10} "
        f"{'utilisation':>12} {'peak RSS':>9}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        m = run.measurement
        print(
            f"{m.latency_ms:>4g}ms {m.variant:>2} {m.rate:>7.1f} {run.core_share:>10.3f} "
            f"{m.cpu_per_1000['consumer']:>11.2f} {m.redis_round_trips / m.commands:>10.2f} "
            f"{run.utilisation:>12.4f} {m.peak_rss_mib:>6.0f}MiB"
        )
    for run in runs:
        m = run.measurement
        if m.profile is not None:
            print(f"\nwhere the worker's CPU goes ({m.latency_ms:g} ms API; py-spy samples)")
            print(step_table(m.profile.read_text(), m.cpu_per_1000["consumer"]))


# --- memory --------------------------------------------------------------------------------


async def run_memory(bench: Bench) -> list[Measurement]:
    await bench.warm_up(["d"])
    results = []
    for latency in bench.options.latencies:
        progress(f"memory: worker draining {bench.options.commands} commands at {latency:g} ms")
        result = await bench.measure("d", latency)
        await bench.check_drained()
        results.append(result)
    return results


def print_memory(options: Options, results: Sequence[Measurement]) -> None:
    print(
        f"\nmemory: itwin-worker draining a {options.commands}-command backlog, "
        f"prefetch {options.prefetch}; VmRSS sampled every {RSS_SAMPLE_SECONDS * 1000:g} ms"
    )
    if options.worker_source is not None:
        print(f"the worker runs from {options.worker_source}, not from this checkout")
    print("steady = median of the samples after 20 % of the backlog; growth = end - first of them")
    header = (
        f"{'API':>6} {'cmd/s':>7} {'ready':>7} {'1st event':>9} {'RSS@ready':>10} "
        f"{'steady':>8} {'end':>8} {'growth':>8} {'VmHWM':>8}"
    )
    print(header)
    print("-" * len(header))
    for m in results:
        steady = [rss for seen, rss in m.rss_samples if seen >= m.commands // 5] or [0.0]
        print(
            f"{m.latency_ms:>4g}ms {m.rate:>7.0f} {m.ready_s:>6.2f}s {m.first_event_s:>8.2f}s "
            f"{m.ready_rss_mib:>7.1f}MiB {statistics.median(steady):>5.1f}MiB "
            f"{steady[-1]:>5.1f}MiB {steady[-1] - steady[0]:>+5.1f}MiB {m.peak_rss_mib:>5.1f}MiB"
        )
    worst = max(m.first_event_s for m in results)
    verdict = "yes" if worst <= READY_LIMIT_SECONDS else "NO"
    print(f"ready to consume within {READY_LIMIT_SECONDS:g} s of start: {verdict}")


# --- command line --------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--commands", type=int, help="backlog per run (5000; --memory: 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions, median taken (3)")
    parser.add_argument("--latency-ms", default="0,50", help="API latencies, comma-separated")
    parser.add_argument("--variants", default="a,b,c,d", help="subset of a,b,c,d")
    parser.add_argument("--prefetch", type=int, default=32, help="prefetch of every variant (32)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1000 commands, 1 run")
    parser.add_argument(
        "--tracing", action="store_true", help="also d with tracing on (t: OTLP to a local sink)"
    )
    parser.add_argument("--memory", action="store_true", help="worker RSS with a 10k backlog")
    parser.add_argument("--rate", type=float, help="the worker alone at this budget (calls/s)")
    parser.add_argument("--burst", type=int, default=10, help="the budget's burst (--rate; 10)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="(--rate) sample the worker with py-spy; print its CPU per pipeline step",
    )
    parser.add_argument(
        "--command",
        choices=BACKLOG_COMMANDS,
        help="the backlog's command (--rate only; default application.create)",
    )
    parser.add_argument(
        "--worker-source",
        type=Path,
        help="run d from this directory's service/ package (another version) instead",
    )
    args = parser.parse_args(argv)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if not variants or not set(variants) <= set(VARIANTS):
        parser.error("--variants: a comma-separated subset of a,b,c,d")
    default_commands = 1000 if args.quick else 10_000 if args.memory else 5000
    if args.rate is not None:
        default_commands = 3000
    commands = args.commands or default_commands
    if commands < 2 or args.repeat < 1 or args.prefetch < 1:
        parser.error("--commands must be at least 2, --repeat and --prefetch at least 1")
    if args.rate is not None and (args.rate <= 0 or args.burst < 1 or args.memory):
        parser.error("--rate must be positive, --burst at least 1, and not with --memory")
    if args.profile and (args.rate is None or not PY_SPY.exists()):
        parser.error("--profile is for --rate, and needs py-spy (in the dev dependencies)")
    if args.command is not None and args.rate is None:
        parser.error("--command is for --rate (the baselines speak workspace.create)")
    latencies = "50" if args.rate and "--latency-ms" not in (argv or sys.argv) else args.latency_ms
    return Options(
        commands=commands,
        repeat=1 if args.quick else args.repeat,
        latencies=tuple(float(x) for x in latencies.split(",") if x.strip()),
        variants=tuple(sorted({*variants, *([TRACED] if args.tracing else [])})),
        prefetch=args.prefetch,
        memory=args.memory,
        worker_source=args.worker_source.resolve() if args.worker_source else None,
        rate=args.rate,
        burst=args.burst,
        tracing=args.tracing,
        command=args.command or ("application.create" if args.rate else ROUTING_KEY),
        profile=args.profile,
    )


async def main_async(options: Options) -> None:
    with bench_vhost() as amqp_url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        async with open_bench(options, amqp_url, Path(tmp)) as bench:
            if options.memory:
                print_memory(options, await run_memory(bench))
            elif options.rate is not None:
                print_budget(options, await run_budget(bench))
            else:
                print_comparison(options, await run_comparison(bench))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    terminate_on_sigterm()
    try:
        asyncio.run(main_async(options))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
