"""The worker's memory under abuse: peak RSS (VmHWM) of `itwin-worker run` per flood.

`./dev bench memory [--prefetch 32] [--only NAME,...]`

Each scenario runs on a fresh worker process with the worker's own limits (MAX_COMMAND_BYTES
1 MiB, MAX_RESPONSE_BYTES 8 MiB, MAX_EVENT_BYTES 1 MiB) against the hostile API stand-in
(tests/hostile.py), in a vhost of its own. Printed per scenario: RSS when ready, peak RSS
(VmHWM) at the end, and the latency the scenario is about:

- `rest`: ready, then idle for 5 s.
- `outsized`: the issue's producer flood, one after the other: a 10 MB name, 100 000 nested
  arrays, 200 000 keys, 50 000 unknown keys, bad UTF-8, then 300 one-megabyte invalid bodies;
  latency: a normal command sent after the last event.
- `outsized:<kind>`: one kind of that flood alone (`--only outsized:200 000 keys`).
- `max-commands`: 300 valid `workspace.create` commands of exactly MAX_COMMAND_BYTES (a name of
  ~1 MiB): each parsed, sent, its answer (which echoes the name) read, too large for an event.
- `huge-answer`: a 201 announcing 300 MB, then 20 commands; latency: the slowest of the 20,
  from its publish to its event.
- `max-answers`: `prefetch` `workspace.get` commands at once, each answered with a valid
  workspace of MAX_RESPONSE_BYTES bytes whose last byte comes 2 s after the rest, so that all
  are held at once; then each is parsed, too large for an event. The worst case the bounds
  allow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench._common import bench_vhost, progress, run_bench, spawn_worker
from service.limits import Limits
from service.producer import Producer
from tests.hostile import MEGABYTE_COMMAND, HostileApi, outsized_commands
from tests.support import status_mib, worker_settings

WAIT = 300.0
ROUTING_KEY = "workspace.create"


@dataclass(frozen=True)
class Figure:
    scenario: str
    ready_mib: float
    peak_mib: float
    latency_s: float | None
    events: int
    expected_events: int


Scenario = Callable[[Producer, HostileApi, int], Awaitable[tuple[float | None, int, int]]]
"""Runs against a ready worker; returns (latency, events received, events expected)."""


async def wait_all(producer: Producer, ids: list[str]) -> dict[str, dict[str, object]]:
    async with asyncio.timeout(WAIT):
        return {command_id: await producer.event_for(command_id) for command_id in ids}


async def rest(producer: Producer, api: HostileApi, prefetch: int) -> tuple[float | None, int, int]:
    await asyncio.sleep(5.0)
    return None, 0, 0


def outsized(kinds: list[str] | None, megabytes: int) -> Scenario:
    async def run(
        producer: Producer, api: HostileApi, prefetch: int
    ) -> tuple[float | None, int, int]:
        commands = outsized_commands()
        ids = [
            await producer.publish(ROUTING_KEY, commands[kind])
            for kind in (kinds if kinds is not None else list(commands))
        ]
        ids += [await producer.publish(ROUTING_KEY, MEGABYTE_COMMAND) for _ in range(megabytes)]
        events = await wait_all(producer, ids)
        started = time.monotonic()
        normal = await producer.publish(ROUTING_KEY, json.dumps({"name": "normal"}).encode())
        await wait_all(producer, [normal])
        return time.monotonic() - started, len(events) + 1, len(ids) + 1

    return run


async def max_commands(
    producer: Producer, api: HostileApi, prefetch: int
) -> tuple[float | None, int, int]:
    envelope = len(json.dumps({"name": ""}).encode())
    command = json.dumps({"name": "x" * (Limits.command_bytes - envelope)}).encode()
    assert len(command) == Limits.command_bytes
    ids = [await producer.publish(ROUTING_KEY, command) for _ in range(300)]
    events = await wait_all(producer, ids)
    return None, len(events), len(ids)


async def huge_answer(
    producer: Producer, api: HostileApi, prefetch: int
) -> tuple[float | None, int, int]:
    huge = await producer.publish(ROUTING_KEY, json.dumps({"name": "huge"}).encode())
    sent: dict[str, float] = {}
    for i in range(20):
        command_id = await producer.publish(ROUTING_KEY, json.dumps({"name": f"w{i}"}).encode())
        sent[command_id] = time.monotonic()
    latencies = []
    async with asyncio.timeout(WAIT):
        for command_id, at in sent.items():
            await producer.event_for(command_id)
            latencies.append(time.monotonic() - at)
        await producer.event_for(huge)
    return max(latencies), 21, 21


async def max_answers(
    producer: Producer, api: HostileApi, prefetch: int
) -> tuple[float | None, int, int]:
    api.answer_delay = 2.0  # all of them held together
    size = Limits.response_bytes
    ids = [
        await producer.publish(
            "workspace.get", json.dumps({"workspaceId": f"size-{size}"}).encode()
        )
        for _ in range(prefetch)
    ]
    events = await wait_all(producer, ids)
    return None, len(events), len(ids)


def scenarios() -> dict[str, Scenario]:
    every: dict[str, Scenario] = {
        "rest": rest,
        "outsized": outsized(None, 300),
    }
    every |= {f"outsized:{kind}": outsized([kind], 0) for kind in outsized_commands()}
    every["outsized:300 x 1 MB"] = outsized([], 300)
    every |= {"max-commands": max_commands, "huge-answer": huge_answer, "max-answers": max_answers}
    return every


DEFAULT = ("rest", "outsized", "max-commands", "huge-answer", "max-answers")


async def measure(name: str, scenario: Scenario, prefetch: int, workdir: Path) -> Figure:
    with bench_vhost() as amqp_url:
        async with HostileApi() as api:
            settings = worker_settings(
                amqp_url, api, log_format="json", log_level="INFO", prefetch=prefetch,
                http_port=0, shutdown_grace_seconds=5.0,
            )  # fmt: skip
            worker = spawn_worker(settings, workdir / f"worker-{len(name)}-{time.time_ns()}.log")
            try:
                await worker.ready()
                ready = status_mib(worker.pid, "VmRSS")
                async with Producer(amqp_url, settings.command_exchange) as producer:
                    latency, events, expected = await scenario(producer, api, prefetch)
                peak = status_mib(worker.pid, "VmHWM")
                if not worker.alive():
                    raise RuntimeError(f"the worker died in {name}:\n{worker.log()[-2000:]}")
            finally:
                worker.stop()
    return Figure(name, ready, peak, latency, events, expected)


def report(figures: list[Figure], prefetch: int) -> None:
    print(f"\nmemory: itwin-worker, prefetch {prefetch}, the worker's default limits")
    print(f"{'scenario':<34} {'ready':>9} {'peak':>9} {'latency':>9} {'events':>9}")
    for figure in figures:
        latency = "" if figure.latency_s is None else f"{figure.latency_s:.2f}s"
        print(
            f"{figure.scenario:<34} {figure.ready_mib:>6.0f}MiB {figure.peak_mib:>6.0f}MiB "
            f"{latency:>9} {figure.events:>4}/{figure.expected_events}"
        )
    if figures:
        print(f"\nmedian ready RSS {statistics.median(f.ready_mib for f in figures):.0f} MiB")


async def main(options: argparse.Namespace) -> bool:
    chosen = options.only.split(",") if options.only else list(DEFAULT)
    every = scenarios()
    unknown = [name for name in chosen if name not in every]
    if unknown:
        raise RuntimeError(f"unknown scenarios {unknown}; known: {sorted(every)}")
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        for name in chosen:
            progress(f"memory: {name}")
            figures.append(await measure(name, every[name], options.prefetch, Path(workdir)))
    report(figures, options.prefetch)
    return all(f.events == f.expected_events for f in figures)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--prefetch", type=int, default=32)
    parser.add_argument("--only", default="", help=f"comma-separated; default {','.join(DEFAULT)}")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run_bench(main(parse(sys.argv[1:]))))
