"""What does a Redis Cluster fault cost the commands waiting through it?

`python -m bench.cluster_outage [--fault stall,failover,unreachable] [--outage 20]
[--replicas 2] [--commands 300] [--rate 40] [--burst 5]`

For each fault: a Redis Cluster of 3 primaries started here (with a replica each and
`cluster-node-timeout` 1 s for `failover`), `--replicas` `itwin-worker run` processes sharing it
(`REDIS_CLUSTER=true`), a backlog of `--commands` `workspace.create`, the budget at `--rate`/s
with a burst of `--burst`. A quarter of the way in (for `unreachable`: from the start) the
primary serving the budget's slot is

- `stall`: frozen (SIGSTOP) for `--outage` seconds, then resumed (SIGCONT);
- `failover`: killed (SIGKILL); its replica is promoted;
- `unreachable`: not there yet: the cluster is created `--outage` seconds after the workers
  started.

Figures per fault:
- calls during the fault: API requests the simulator logged while the fault lasted;
- first call after: from the recovery (SIGCONT; the kill; the cluster saying `ok`) to the next
  API request, and the longest gap between two API requests;
- drain: from the recovery to the last event;
- worst window: the most API requests in any 1 s and 5 s (bounds R + B and 5R + B);
- POSTs, dead letters, events: one POST per command, none dead-lettered, every event a success;
- CPU while waiting: each worker's CPU seconds from the fault to the first call after it, as a
  share of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    Simulator,
    bench_vhost,
    cpu_seconds,
    declare_topology,
    progress,
    publish_backlog,
    queue_depth,
    random_name,
    run_bench,
    spawn_worker,
    stopping,
    worker_settings,
)
from service.producer import Producer
from service.redis_keys import RedisKeys
from tests.support import (
    RedisServer,
    RedisServers,
    cluster_primary_of,
    free_port,
    max_in_window,
)

FAULTS = ("stall", "failover", "unreachable")
SUCCESS_EVENT = "workspace.created"


@dataclass(frozen=True)
class Options:
    faults: tuple[str, ...]
    outage: float
    replicas: int
    commands: int
    rate: float
    burst: int


@dataclass(frozen=True)
class Result:
    fault: str
    calls_during: int
    first_call_after: float
    longest_gap: float
    drain_seconds: float
    worst_1s: int
    worst_5s: int
    posts: int
    dead_letters: int
    events: dict[str, int]
    cpu_share: list[float]
    workers_alive: bool


async def run(fault: str, options: Options, amqp_url: str, workdir: Path) -> Result:
    servers = RedisServers(workdir / "redis")
    try:
        with Simulator(workdir) as simulator:
            simulator.reset(latency_ms=0)
            return await _run(fault, options, amqp_url, workdir, servers, simulator)
    finally:
        servers.stop()


async def _run(
    fault: str,
    options: Options,
    amqp_url: str,
    workdir: Path,
    servers: RedisServers,
    simulator: Simulator,
) -> Result:
    prefix = random_name()
    ports = [free_port(with_bus=True) for _ in range(3)]
    node_url = f"redis://127.0.0.1:{ports[0]}/0"
    primary: RedisServer | None = None
    if fault != "unreachable":
        # A replica each, and a short node timeout, only where one is to be promoted.
        replicas, timeout_ms = (1, 1000) if fault == "failover" else (0, 2000)
        nodes = await servers.cluster(3, replicas=replicas, node_timeout_ms=timeout_ms)
        node_url = nodes[0].url
        primary = await cluster_primary_of(nodes, RedisKeys(prefix).limiter)
    overrides = {
        "redis_url": node_url,
        "redis_cluster": True,
        "redis_prefix": prefix,
        "rate_limit_per_second": options.rate,
        "rate_limit_burst": options.burst,
    }
    settings = worker_settings(amqp_url, simulator, **overrides)
    await declare_topology(settings)
    async with Producer(amqp_url, settings.command_exchange) as producer:
        ids = await publish_backlog(producer, options.commands, reply=True)
        workers = [
            spawn_worker(worker_settings(amqp_url, simulator, **overrides), workdir / f"w{i}.log")
            for i in range(options.replicas)
        ]
        with stopping(workers):
            await asyncio.gather(*(worker.ready() for worker in workers))
            if fault != "unreachable":
                async with asyncio.timeout(60):
                    # The simulator is another process: its request log is polled.
                    while len(simulator.requests()) < options.commands // 4:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            cpu_before = [cpu_seconds(worker.pid) for worker in workers]
            began = time.time()
            if primary is not None and fault == "stall":
                primary.pause()
                progress(f"the budget's primary {primary.address} frozen for {options.outage:g} s")
                await asyncio.sleep(options.outage)
                primary.resume()
            elif primary is not None:
                primary.kill()
                progress(f"the budget's primary {primary.address} killed")
            else:
                progress(f"no cluster for {options.outage:g} s")
                await asyncio.sleep(options.outage)
                await servers.cluster(3, ports=ports)
            recovered = time.time()
            progress(f"recovered; {len(producer.events)} of {len(ids)} events so far")
            async with asyncio.timeout(120):
                while not [t for t, _ in simulator.requests() if t >= recovered]:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            cpu_share = [
                (cpu_seconds(worker.pid) - before) / (time.time() - began)
                for worker, before in zip(workers, cpu_before, strict=True)
            ]
            async with asyncio.timeout(options.commands / options.rate + 120):
                events = [await producer.event_for(command_id) for command_id in ids]
            drained = time.time() - recovered
            await asyncio.sleep(1.0)
            dead = await queue_depth(amqp_url, settings.dead_letter_queue)
            alive = all(worker.alive() for worker in workers)
    arrivals = sorted(t for t, _ in simulator.requests())
    after = [t for t in arrivals if t >= recovered]
    types: dict[str, int] = {}
    for event in events:
        types[event["type"]] = types.get(event["type"], 0) + 1
    return Result(
        fault=fault,
        calls_during=sum(1 for t in arrivals if began <= t < recovered),
        first_call_after=(after[0] - recovered) if after else float("nan"),
        longest_gap=max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0),
        drain_seconds=drained,
        worst_1s=max_in_window(arrivals, 1.0),
        worst_5s=max_in_window(arrivals, 5.0),
        posts=sum(1 for _, method, _ in simulator.request_log() if method == "POST"),
        dead_letters=dead,
        events=types,
        cpu_share=cpu_share,
        workers_alive=alive,
    )


def report(options: Options, results: list[Result]) -> bool:
    print(
        f"\ncluster outage: 3 primaries, {options.replicas} workers, {options.commands} "
        f"workspace.create, R = {options.rate:g}/s, B = {options.burst}, fault {options.outage:g} s"
        f" (failover: until promoted); bounds {options.rate + options.burst:g} per 1 s, "
        f"{5 * options.rate + options.burst:g} per 5 s"
    )
    ok = True
    for r in results:
        cpu = ", ".join(f"{share:.1%}" for share in r.cpu_share)
        print(f"\n{r.fault}")
        print(f"  calls during the fault:  {r.calls_during}")
        print(f"  first call after:        {r.first_call_after:.2f} s")
        print(f"  longest gap:             {r.longest_gap:.2f} s")
        print(f"  drain after recovery:    {r.drain_seconds:.1f} s")
        print(f"  worst window:            {r.worst_1s} per 1 s, {r.worst_5s} per 5 s")
        print(f"  POSTs:                   {r.posts}")
        print(f"  dead letters:            {r.dead_letters}")
        print(f"  events:                  {r.events}")
        print(f"  CPU while waiting:       {cpu} of a core")
        print(f"  workers alive:           {r.workers_alive}")
        ok &= (
            r.posts == options.commands
            and r.dead_letters == 0
            and set(r.events) == {SUCCESS_EVENT}
            and r.workers_alive
        )
    return ok


async def main_async(options: Options) -> bool:
    results = []
    for fault in options.faults:
        with bench_vhost() as amqp_url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            progress(f"fault: {fault}")
            results.append(await run(fault, options, amqp_url, Path(tmp)))
    return report(options, results)


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster_outage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fault", default=",".join(FAULTS), help="faults, comma-separated")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds of the fault (20)")
    parser.add_argument("--replicas", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--commands", type=int, default=300, help="commands (300)")
    parser.add_argument("--rate", type=float, default=40.0, help="limiter rate, calls/s (40)")
    parser.add_argument("--burst", type=int, default=5, help="limiter burst (5)")
    args = parser.parse_args(argv)
    faults = tuple(f.strip() for f in args.fault.split(",") if f.strip())
    if not faults or set(faults) - set(FAULTS):
        parser.error(f"--fault takes some of {', '.join(FAULTS)}")
    if args.outage <= 0 or args.replicas < 1 or args.commands < 4 or args.rate <= 0:
        parser.error("need --outage > 0, --replicas >= 1, --commands >= 4 and --rate > 0")
    if args.burst < 1:
        parser.error("need --burst >= 1")
    return Options(faults, args.outage, args.replicas, args.commands, args.rate, args.burst)


def main(argv: Sequence[str] | None = None) -> int:
    return run_bench(main_async(parse_options(argv)))


if __name__ == "__main__":
    sys.exit(main())
