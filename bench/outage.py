"""What does an API outage cost, with the circuit breaker shared by the replicas?

`python -m bench.outage [--outage 60] [--replicas 3] [--commands 600] [--rate 20]
[--latency-ms 50] [--before 5]`

A backlog of N `workspace.create` commands waits; `--replicas` `itwin-worker run` processes
sharing one Redis (limiter and breakers, a fresh key prefix) start on it; `--before` seconds in,
the simulator answers 503 to every API call for `--outage` seconds, then recovers. The worker's
own defaults otherwise (breaker, retries, delay queues).

Figures:
- calls into the failing API: API requests the simulator logged during the outage, and per
  second (the breaker's promise: a run of failures, then one probe at a growing interval).
- drain after recovery: from the recovery to the last event.
- dead letters: messages in the dead-letter queue at the end (0 expected), and commands parked
  in a delay queue (a command whose retries the outage spent would be).
- events: event types that came back (every one `workspace.created` expected).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    REDIS_URL,
    Simulator,
    bench_redis_prefix,
    bench_vhost,
    declare_topology,
    progress,
    publish_backlog,
    queue_depth,
    run_bench,
    spawn_worker,
    stopping,
    worker_settings,
)
from service.producer import Producer

SUCCESS_EVENT = "workspace.created"


@dataclass(frozen=True)
class Options:
    outage: float
    replicas: int
    commands: int
    rate: float
    latency_ms: float
    before: float


@dataclass(frozen=True)
class Result:
    failing_calls: int
    calls_before: int
    calls_total: int
    drain_seconds: float
    events_before_recovery: int
    dead_letters: int
    delayed: int
    events: dict[str, int]


async def run(
    options: Options, amqp_url: str, simulator: Simulator, prefix: str, workdir: Path
) -> Result:
    simulator.reset(options.latency_ms)
    overrides = {
        "rate_limit_per_second": options.rate,
        "redis_url": REDIS_URL,
        "redis_prefix": prefix,
    }
    settings = worker_settings(amqp_url, simulator, **overrides)
    await declare_topology(settings)
    async with Producer(amqp_url, settings.command_exchange) as producer:
        ids = await publish_backlog(producer, options.commands, reply=True)
        progress(f"{len(ids)} commands queued; starting {options.replicas} workers")
        workers = [
            spawn_worker(worker_settings(amqp_url, simulator, **overrides), workdir / f"w{i}.log")
            for i in range(options.replicas)
        ]
        with stopping(workers):
            await asyncio.gather(*(worker.ready() for worker in workers))
            await asyncio.sleep(options.before)
            simulator.configure(error_rate=1.0, error_statuses=[503])
            down = time.time()
            progress(f"the API answers 503 for {options.outage:g} s")
            await asyncio.sleep(options.outage)
            simulator.configure(error_rate=0.0)
            up = time.time()
            during = len(producer.events)
            progress(f"the API is back; {during} of {len(ids)} events so far")
            async with asyncio.timeout(options.commands / options.rate + 120):
                events = [await producer.event_for(command_id) for command_id in ids]
            drained = time.time() - up
            dead = await queue_depth(amqp_url, settings.dead_letter_queue)
            delayed = 0
            for seconds in settings.retry_delays:
                delayed += await queue_depth(amqp_url, settings.delay_queue(seconds))
    arrivals = [t for t, _ in simulator.requests("api")]
    types: dict[str, int] = {}
    for event in events:
        types[event["type"]] = types.get(event["type"], 0) + 1
    return Result(
        failing_calls=sum(1 for t in arrivals if down <= t <= up),
        calls_before=sum(1 for t in arrivals if t < down),
        calls_total=len(arrivals),
        drain_seconds=drained,
        events_before_recovery=during,
        dead_letters=dead,
        delayed=delayed,
        events=types,
    )


def report(options: Options, result: Result) -> bool:
    print(
        f"\noutage: {options.replicas} replicas sharing one Redis, the API answering 503 for "
        f"{options.outage:g} s; {options.commands} workspace.create commands, "
        f"R = {options.rate:g}/s, API latency {options.latency_ms:g} ms"
    )
    per_second = result.failing_calls / options.outage
    print(f"calls into the failing API:  {result.failing_calls} ({per_second:.2f}/s)")
    print(f"drain after recovery:        {result.drain_seconds:.1f} s")
    print(f"dead letters:                {result.dead_letters}")
    print(f"parked in delay queues:      {result.delayed}")
    print(f"events:                      {result.events}")
    print(
        f"(API calls before the outage {result.calls_before}, in all {result.calls_total}; "
        f"events before recovery {result.events_before_recovery})"
    )
    return result.dead_letters == 0 and set(result.events) == {SUCCESS_EVENT}


async def main_async(options: Options) -> bool:
    with bench_vhost() as amqp_url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        async with bench_redis_prefix() as (prefix, _):
            with Simulator(Path(tmp)) as simulator:
                result = await run(options, amqp_url, simulator, prefix, Path(tmp))
    return report(options, result)


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.outage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--outage", type=float, default=60.0, help="seconds of 503s (60)")
    parser.add_argument("--replicas", type=int, default=3, help="worker processes (3)")
    parser.add_argument("--commands", type=int, default=600, help="commands (600)")
    parser.add_argument("--rate", type=float, default=20.0, help="limiter rate, calls/s (20)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="API latency (50)")
    parser.add_argument("--before", type=float, default=5.0, help="seconds before the outage (5)")
    args = parser.parse_args(argv)
    if args.outage <= 0 or args.replicas < 1 or args.commands < 1 or args.rate <= 0:
        parser.error("need --outage > 0, --replicas >= 1, --commands >= 1 and --rate > 0")
    return Options(
        args.outage, args.replicas, args.commands, args.rate, args.latency_ms, args.before
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(main_async(parse_options(argv)))


if __name__ == "__main__":
    sys.exit(main())
