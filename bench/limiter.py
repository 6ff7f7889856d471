"""Does one Redis-shared budget hold across replicas, and how much of it do they use?

`python -m bench.limiter [--rate 20] [--burst 5] [--commands 600] [--replicas 3]
[--prefetch 32] [--latency-ms 0,200]`

For each API latency: the simulator (its own process) is reset and given the latency, N
`workspace.create` commands are published (with a reply queue), then `--replicas`
`itwin-worker run` processes sharing one Redis limiter (same URL and key prefix, a fresh prefix
per latency so each starts with a full bucket) drain them; once all N events are back, the
simulator's request log gives the arrival time of every API call.

Figures, per latency:
- calls: API requests the simulator logged (N when nothing was retried).
- duration: first to last arrival.
- max in 1 s / 5 s: the most arrivals in any half-open window [t, t + W), against the limiter's
  guarantee R·W + B. A window above its bound is a failure (exit status 1).
- achieved: (calls - B) / duration, the steady rate once the initial burst of B is spent.
- utilisation: achieved / R; 1.00 means the replicas use the whole budget, whatever the latency
  (the 200 ms run checks that prefetch keeps enough calls in flight: R·latency of them).
- per replica: commands each worker finished (its `command finished` log lines).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    REDIS_URL,
    ChildProcess,
    Simulator,
    bench_redis_prefix,
    bench_vhost,
    declare_topology,
    progress,
    publish_backlog,
    run_bench,
    spawn_worker,
    stopping,
    worker_settings,
)
from service.producer import Producer
from tests.support import max_in_window

SUCCESS_EVENT = "workspace.created"


@dataclass(frozen=True)
class Options:
    rate: float
    burst: int
    commands: int
    replicas: int
    prefetch: int
    latencies: tuple[float, ...]
    dump: Path | None = None


@dataclass(frozen=True)
class Result:
    """What reached the API in one latency's run, and what came back."""

    latency_ms: float
    arrivals: list[float]
    """Arrival times of the API calls (simulator clock, seconds)."""
    failed_calls: int
    """API calls answered with anything but 2xx (429s from the simulator would show here)."""
    events: dict[str, int]
    """Event type → how many came back."""
    per_replica: list[int]

    @property
    def calls(self) -> int:
        return len(self.arrivals)

    @property
    def duration(self) -> float:
        return max(self.arrivals) - min(self.arrivals) if self.arrivals else 0.0

    def max_in(self, window: float) -> int:
        return max_in_window(self.arrivals, window)

    def densest(self, window: float) -> float:
        """Where the fullest window starts, in seconds after the first arrival."""
        ordered = sorted(self.arrivals)
        counts = [bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)]
        return ordered[counts.index(max(counts))] - ordered[0] if ordered else 0.0


def bound(options: Options, window: float) -> float:
    """The limiter's guarantee: at most R·W + B calls start in any window of W seconds."""
    return options.rate * window + options.burst


def achieved_rate(options: Options, result: Result) -> float:
    """Calls per second after the initial burst: (calls - B) / (last - first arrival)."""
    return (result.calls - options.burst) / result.duration if result.duration else 0.0


async def run_latency(
    options: Options,
    amqp_url: str,
    simulator: Simulator,
    prefix: str,
    workdir: Path,
    latency: float,
) -> Result:
    """Backlog first, then the replicas; wait for every event; read the simulator's log."""
    simulator.reset(latency)
    overrides = {
        "rate_limit_per_second": options.rate,
        "rate_limit_burst": options.burst,
        "redis_url": REDIS_URL,
        "redis_prefix": f"{prefix}:{latency:g}ms",
        "prefetch": options.prefetch,
    }
    settings = worker_settings(amqp_url, simulator, **overrides)
    await declare_topology(settings)
    async with Producer(amqp_url, settings.command_exchange) as producer:
        ids = await publish_backlog(producer, options.commands, reply=True)
        progress(f"{latency:g} ms: {len(ids)} commands queued; starting {options.replicas} workers")
        workers = [
            # Settings per worker: each gets its own free HTTP port.
            spawn_worker(
                worker_settings(amqp_url, simulator, **overrides),
                workdir / f"worker-{latency:g}ms-{i}.log",
            )
            for i in range(options.replicas)
        ]
        with stopping(workers):
            await asyncio.gather(*(worker.ready() for worker in workers))
            expected = (options.commands - options.burst) / options.rate
            try:
                async with asyncio.timeout(2 * expected + 60):
                    events = [await producer.event_for(command_id) for command_id in ids]
            except TimeoutError:
                raise RuntimeError(_stuck(producer, options, workers)) from None
    requests = simulator.requests("api")
    types: dict[str, int] = {}
    for event in events:
        types[event["type"]] = types.get(event["type"], 0) + 1
    return Result(
        latency_ms=latency,
        arrivals=[t for t, _ in requests],
        failed_calls=sum(1 for _, status in requests if status is None or status >= 300),
        events=types,
        per_replica=[worker.log().count('"command finished"') for worker in workers],
    )


def _stuck(producer: Producer, options: Options, workers: Sequence[ChildProcess]) -> str:
    """What to say when the events stop coming: how many came, and how each log ends."""
    lines = [f"only {len(producer.events)} of {options.commands} events arrived in time"]
    for worker in workers:
        lines += [f"--- {worker.log_path.name}:", *worker.log().splitlines()[-8:]]
    return "\n".join(lines)


def report(options: Options, results: Sequence[Result]) -> bool:
    """Print the table; True when every window stayed within its bound."""
    print(
        f"\nlimiter: {options.replicas} replicas sharing one Redis budget, "
        f"R = {options.rate:g}/s, B = {options.burst}, "
        f"{options.commands} workspace.create commands per latency, prefetch {options.prefetch}"
    )
    print("windows are half-open [t, t+W) over the API arrival times logged by the simulator")
    header = (
        f"{'API':>6} {'calls':>5} {'duration':>9}  {'max 1 s ≤ R+B':<17}  "
        f"{'max 5 s ≤ 5R+B':<17}  {'achieved':>9} {'utilisation':>11}  per replica"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for result in results:
        cells = []
        for window in (1.0, 5.0):
            seen, limit = result.max_in(window), bound(options, window)
            ok = ok and seen <= limit
            verdict = "ok" if seen <= limit else "BROKEN"
            cells.append(f"{seen:>4} ≤ {limit:<5g} {verdict:<6}")
        achieved = achieved_rate(options, result)
        print(
            f"{result.latency_ms:>4g}ms {result.calls:>5} {result.duration:>8.2f}s  "
            f"{cells[0]:<17}  {cells[1]:<17}  {achieved:>7.2f}/s {achieved / options.rate:>11.3f}  "
            f"{'/'.join(map(str, result.per_replica))}"
        )
        _print_anomalies(options, result)
        if result.max_in(1.0) > bound(options, 1.0):
            print(f"{'':>6} the fullest 1 s window starts {result.densest(1.0):.2f} s in")
    print("all windows within R·W + B" if ok else "A WINDOW BOUND WAS BROKEN")
    return ok


def _print_anomalies(options: Options, result: Result) -> None:
    if result.calls != options.commands or result.failed_calls:
        print(
            f"{'':>6} note: {result.calls} calls for {options.commands} commands, "
            f"{result.failed_calls} not 2xx"
        )
    if set(result.events) != {SUCCESS_EVENT}:
        print(f"{'':>6} note: events {result.events}")


async def main_async(options: Options) -> bool:
    results = []
    with bench_vhost() as amqp_url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        async with bench_redis_prefix() as (prefix, _):
            with Simulator(workdir) as simulator:
                for latency in options.latencies:
                    result = await run_latency(
                        options, amqp_url, simulator, prefix, workdir, latency
                    )
                    progress(f"{latency:g} ms: {result.calls} API calls in {result.duration:.1f} s")
                    results.append(result)
    if options.dump is not None:
        arrivals = {f"{r.latency_ms:g}": r.arrivals for r in results}
        options.dump.write_text(json.dumps(arrivals))
    return report(options, results)


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limiter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=20.0, help="R, calls per second (20)")
    parser.add_argument("--burst", type=int, default=5, help="B, bucket size (5)")
    parser.add_argument("--commands", type=int, default=600, help="commands per latency (600)")
    parser.add_argument("--replicas", type=int, default=3, help="worker processes (3)")
    parser.add_argument("--prefetch", type=int, default=32, help="prefetch per worker (32)")
    parser.add_argument("--latency-ms", default="0,200", help="API latencies (0,200)")
    parser.add_argument("--dump", type=Path, help="write the arrival times to this JSON file")
    args = parser.parse_args(argv)
    options = Options(
        rate=args.rate,
        burst=args.burst,
        commands=args.commands,
        replicas=args.replicas,
        prefetch=args.prefetch,
        latencies=tuple(float(x) for x in args.latency_ms.split(",") if x.strip()),
        dump=args.dump,
    )
    if options.rate <= 0 or options.burst < 1 or options.commands <= options.burst:
        parser.error("need --rate > 0, --burst >= 1 and --commands > --burst")
    if options.replicas < 1 or options.prefetch < 1 or not options.latencies:
        parser.error("need --replicas >= 1, --prefetch >= 1 and at least one latency")
    _warn_if_prefetch_binds(options)
    return options


def _warn_if_prefetch_binds(options: Options) -> None:
    """Keeping R calls/s going at latency L needs R·L calls in flight (plus waiting ones)."""
    needed = options.rate * max(options.latencies) / 1000
    if options.replicas * options.prefetch < 2 * needed:
        progress(
            f"warning: {options.replicas} x {options.prefetch} in flight may not keep "
            f"{options.rate:g}/s busy at {max(options.latencies):g} ms (needs ~{needed:.0f})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(main_async(parse_options(argv)))


if __name__ == "__main__":
    sys.exit(main())
