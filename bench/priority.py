"""Commands first, polls take what is left: one budget shared by commands and job polls.

`python -m bench.priority [--duration 60] [--replicas 1,3] [--tiers 20/s,community]
[--community-per-hour 1800]`

For each tier and replica count: the simulator (its own process) is reset; a setup worker
with a budget of its own creates and submits the tier's jobs (they outlive the run), so the
tier's budget starts full; the setup worker stops and `--replicas` `itwin-worker run`
processes sharing one Redis budget (a fresh key prefix) take over the following. Then, for
`--duration` seconds, `job.get` commands arrive at the tier's command rate, one per followed
job, so the simulator's request log (arrival times and paths) names every command's call.

Tiers:
- 20/s: R = 20/s, B = 5; 150 jobs on a 0.5 s schedule (300 polls/s wanted), 2 commands/s.
- community: the Community tier, R = 8.3/s, B = 2 (500 a minute), and an hourly budget scaled
  down so that it binds within the run (`--community-per-hour`, default 1 800: a burst of 180,
  then 0.45/s); 60 jobs on a 2 s schedule, 0.25 commands/s.

Figures, per run:
- command p50 / p95 / p99: from publishing a command to its API call arriving.
- poll rate: progress calls per second; used: every call over what the budget allowed in the
  run (R·D + B, or the hourly bucket's r·D + b when smaller).
- worst 1 s / 60 s: the most arrivals in any window [t, t + W), against the guarantee (each
  bucket's r·W + b); a window above it is a failure (exit status 1). A run shorter than 60 s
  has one 60 s window: the whole run.
- poll lag max / p95: how far past its schedule each job's next poll came (gap between two
  polls of a job, less the schedule; the first gap from the start of the run, the last until
  its end), over all jobs: the stretch when the budget is full.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import (
    REDIS_URL,
    Simulator,
    bench_redis_prefix,
    bench_vhost,
    progress,
    run_bench,
    spawn_worker,
    stopping,
    worker_settings,
)
from service.limiter import Bucket, buckets_for
from service.producer import Producer, dumps
from tests.support import max_in_window, percentile

JOB = {
    "type": "Full",
    "name": "bench",
    "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"}],
    "settings": {"outputs": ["OBJ"]},
}


@dataclass(frozen=True)
class Tier:
    name: str
    rate: float
    burst: int
    per_hour: int | None
    jobs: int
    schedule: float
    command_rate: float

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return buckets_for(self.rate, self.burst, self.per_hour)

    def bound(self, window: float) -> float:
        """The guarantee: no window of W seconds holds more than every bucket's r·W + b."""
        return min(bucket.rate * window + bucket.burst for bucket in self.buckets)


@dataclass(frozen=True)
class Options:
    duration: float
    replicas: tuple[int, ...]
    tiers: tuple[Tier, ...]


@dataclass(frozen=True)
class Result:
    tier: Tier
    replicas: int
    start: float
    duration: float
    job_ids: list[str]
    command_waits: list[float]
    commands_published: int
    poll_times: dict[str, list[float]]
    arrivals: list[float]

    @property
    def polls(self) -> int:
        return sum(len(times) for times in self.poll_times.values())

    def lags(self) -> list[float]:
        """Each gap between two polls of a job, less the schedule; and each job's open gap at
        the end (from its last poll, or the start, until the end): a lower bound of its next
        poll's lag, so a job the budget no longer reaches shows too."""
        lags = []
        for job_id in self.job_ids:
            times = [self.start, *self.poll_times.get(job_id, []), self.start + self.duration]
            lags += [max(b - a - self.tier.schedule, 0.0) for a, b in itertools.pairwise(times)]
        return lags


async def create_jobs(producer: Producer, count: int) -> list[str]:
    """Create and submit `count` jobs (the setup worker starts following them)."""
    workspace = await producer.request("workspace.create", dumps({"name": "bench"}))
    job = {**JOB, "workspaceId": workspace["result"]["id"]}
    created = [await producer.publish("job.create", dumps(job)) for _ in range(count)]
    job_ids = [(await producer.event_for(i))["result"]["id"] for i in created]
    submits = [await producer.publish("job.submit", dumps({"jobId": j})) for j in job_ids]
    for command_id in submits:
        event = await producer.event_for(command_id)
        if event["type"] != "job.submitted":
            raise RuntimeError(f"setup: {event['type']}: {event.get('error')}")
    return job_ids


async def run(
    options: Options,
    tier: Tier,
    replicas: int,
    amqp_url: str,
    simulator: Simulator,
    prefix: str,
    workdir: Path,
) -> Result:
    label = f"{tier.name.replace('/', '')}-{replicas}"
    simulator.reset(0)
    # Jobs outlive the setup and the run: 60 simulated seconds at this scale.
    simulator.configure(time_scale=(options.duration + 120) / 60, job_duration_seconds=60)
    common: dict[str, Any] = {"job_poll_schedule": [tier.schedule], "redis_url": REDIS_URL}
    setup_settings = worker_settings(
        amqp_url, simulator, rate_limit_per_second=500, rate_limit_burst=100,
        redis_prefix=f"{prefix}:{label}:setup", **common,
    )  # fmt: skip
    setup = spawn_worker(setup_settings, workdir / f"setup-{label}.log")
    with stopping([setup]):
        await setup.ready()  # it declares the exchanges and queues
        async with Producer(amqp_url, setup_settings.command_exchange) as producer:
            async with asyncio.timeout(120):
                job_ids = await create_jobs(producer, tier.jobs)
    progress(f"{label}: {len(job_ids)} jobs followed; starting {replicas} workers")
    overrides = {
        "rate_limit_per_second": tier.rate,
        "rate_limit_burst": tier.burst,
        "rate_limit_per_hour": tier.per_hour,
        "redis_prefix": f"{prefix}:{label}",
        **common,
    }
    workers = [
        spawn_worker(
            worker_settings(amqp_url, simulator, **overrides),
            workdir / f"worker-{label}-{i}.log",
        )
        for i in range(replicas)
    ]
    with stopping(workers):
        await asyncio.gather(*(worker.ready() for worker in workers))
        async with Producer(amqp_url, setup_settings.command_exchange) as producer:
            simulator.clear_requests()
            start = time.time()
            published: dict[str, list[float]] = defaultdict(list)
            ids = []
            count = int(options.duration * tier.command_rate)
            for k in range(count):
                await asyncio.sleep(max(start + k / tier.command_rate - time.time(), 0.0))
                job_id = job_ids[k % len(job_ids)]
                published[job_id].append(time.time())
                ids.append(await producer.publish("job.get", dumps({"jobId": job_id})))
            end = start + options.duration
            await asyncio.sleep(max(end - time.time(), 0.0))
            try:
                async with asyncio.timeout(120):
                    for command_id in ids:
                        await producer.event_for(command_id)
            except TimeoutError:
                progress(f"{label}: not every command was answered within 120 s")
    log = [entry for entry in simulator.request_log() if entry[0] < end]
    calls: dict[str, list[float]] = defaultdict(list)
    polls: dict[str, list[float]] = defaultdict(list)
    for t, method, path in log:
        if path.endswith("/progress"):
            polls[path.split("/")[-2]].append(t)
        elif method == "GET":
            calls[path.split("/")[-1]].append(t)
    waits = [
        called - sent
        for job_id, sent_times in published.items()
        for sent, called in zip(sent_times, sorted(calls[job_id]), strict=False)
    ]
    arrivals = [t for t, _, _ in log]
    return Result(
        tier, replicas, start, options.duration, job_ids, waits, len(ids), polls, arrivals
    )


def report(results: Sequence[Result]) -> bool:
    print("\npriority: commands and job polls share one budget (worker replicas share Redis)")
    header = (
        f"{'tier':<10} {'repl':>4} {'cmds':>4} {'p50':>6} {'p95':>6} {'p99':>6}  "
        f"{'polls/s':>7} {'used':>5}  {'worst 1 s':<12} {'worst 60 s':<14} "
        f"{'lag max':>7} {'lag p95':>7}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for result in results:
        tier = result.tier
        waits = result.command_waits
        allowed = min(b.rate * result.duration + b.burst for b in tier.buckets)
        used = len(result.arrivals) / allowed
        cells = []
        for window in (1.0, 60.0):
            seen, limit = max_in_window(result.arrivals, window), tier.bound(window)
            ok = ok and seen <= limit
            cells.append(f"{seen}≤{limit:g}{'' if seen <= limit else ' BROKEN'}")
        lags = result.lags()
        print(
            f"{tier.name:<10} {result.replicas:>4} {len(waits):>4} "
            f"{percentile(waits, 0.5):>5.2f}s {percentile(waits, 0.95):>5.2f}s "
            f"{percentile(waits, 0.99):>5.2f}s  {result.polls / result.duration:>7.2f} "
            f"{used:>5.2f}  {cells[0]:<12} {cells[1]:<14} "
            f"{max(lags, default=0.0):>6.1f}s {percentile(lags, 0.95):>6.1f}s"
        )
        if len(waits) < result.commands_published:
            print(f"{'':>10} note: {result.commands_published - len(waits)} commands not called")
    print("all windows within the guarantee" if ok else "A WINDOW BOUND WAS BROKEN")
    return ok


async def main_async(options: Options) -> bool:
    results = []
    with bench_vhost() as amqp_url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        async with bench_redis_prefix() as (prefix, _):
            with Simulator(workdir) as simulator:
                for tier in options.tiers:
                    for replicas in options.replicas:
                        results.append(
                            await run(options, tier, replicas, amqp_url, simulator, prefix, workdir)
                        )
    return report(results)


def tiers(per_hour: int) -> dict[str, Tier]:
    return {
        "20/s": Tier("20/s", 20.0, 5, None, jobs=150, schedule=0.5, command_rate=2.0),
        "community": Tier("community", 8.3, 2, per_hour, jobs=60, schedule=2.0, command_rate=0.25),
    }


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.priority",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run (60)")
    parser.add_argument("--replicas", default="1,3", help="worker processes per run (1,3)")
    parser.add_argument("--tiers", default="20/s,community", help="which tiers (both)")
    parser.add_argument(
        "--community-per-hour", type=int, default=1800, help="the scaled-down hourly budget"
    )
    args = parser.parse_args(argv)
    known = tiers(args.community_per_hour)
    names = [name.strip() for name in args.tiers.split(",") if name.strip()]
    if not names or any(name not in known for name in names):
        parser.error(f"--tiers: a comma-separated list of {', '.join(known)}")
    replicas = tuple(int(x) for x in args.replicas.split(",") if x.strip())
    if args.duration < 5 or not replicas or min(replicas) < 1:
        parser.error("need --duration >= 5 and --replicas of at least 1")
    return Options(args.duration, replicas, tuple(known[name] for name in names))


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(main_async(parse_options(argv)))


if __name__ == "__main__":
    sys.exit(main())
