"""Instructions the worker executes per command, counted by callgrind: a figure for A/B.

`python -m bench.instructions [--commands 300] [--repeat 2] [--worker-source DIR]`

Wall-clock figures on this machine (two vCPUs shared with other guests) move by ±15 % between
runs of the same code, more than most single optimisations are worth. Callgrind counts the
instructions the process executes, whatever else the machine does: the same code gives the same
count within ~1.5 %.

The worker (variant d of `bench.throughput`: limiter and idempotency in Redis, JSON logs,
confirmed events, 0 ms simulator) runs under `valgrind --tool=callgrind` with instrumentation
off while it starts. Once it logs `worker consuming`, a backlog being ready, instrumentation is
switched on; after `--commands` more `command finished` log lines it is dumped. Figure:
instructions / commands finished in that window. The worker runs ~50 times slower under valgrind,
so it always finds messages waiting: the count is for the saturated regime, the one the
throughput figures are about. The limiter is set to 1/s with a burst of 1 000 000: it never
binds, and its allowed lateness (half an interval) is longer than any round trip under
valgrind, so no slot is ever re-reserved (a starved process would, and count those calls).

`--worker-source DIR` counts another version (`git archive <commit> service | tar -x -C DIR`).
Needs valgrind (every machine kind here has it).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    REPO,
    ChildProcess,
    bench_vhost,
    progress,
    publish_backlog,
    purge_queue,
    terminate_on_sigterm,
    worker_environment,
)
from bench.throughput import Bench, Options, open_bench

FINISHED_MARKER = '"command finished"'
# Start-up under valgrind takes about a minute; a window of a few hundred commands about 30 s.
START_TIMEOUT_SECONDS = 600.0
# Uninstrumented, the worker runs only a few times slower than natively: until callgrind_control
# switches counting on, it drains hundreds of commands. The backlog leaves room for that.
BACKLOG = 3000
STALL_SECONDS = 20.0


@dataclass(frozen=True)
class Count:
    commands: int
    instructions: int

    @property
    def per_command(self) -> float:
        return self.instructions / self.commands


def finished(log: Path) -> int:
    return log.read_text(errors="replace").count(FINISHED_MARKER)


def total_instructions(dump: Path) -> int:
    """The `totals:` (or `summary:`) line of every callgrind dump file of this run, summed."""
    total = 0
    for path in dump.parent.glob(dump.name + "*"):
        counts = [
            int(line.split()[1])
            for line in path.read_text().splitlines()
            if line.startswith(("totals:", "summary:"))
        ]
        total += max(counts, default=0)
    return total


async def callgrind_control(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "callgrind_control",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await process.wait() != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed")


async def wait_for_commands(log: Path, target: int) -> None:
    """Until the log shows `target` finished commands; fail when they stop coming."""
    seen, last_progress = finished(log), time.monotonic()
    while seen < target:
        await asyncio.sleep(0.2)
        now_seen = finished(log)
        if now_seen > seen:
            seen, last_progress = now_seen, time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            raise RuntimeError(
                f"no command finished for {STALL_SECONDS:g} s at {seen} of {target}: "
                "the backlog ran out before the window, or the worker is stuck"
            )


async def count_once(bench: Bench, workdir: Path, run: int, source: Path | None) -> Count:
    window = bench.options.commands
    await publish_backlog(bench.producer, BACKLOG + window)
    # Everything crawls under valgrind: keep the API timeout from turning slowness into errors.
    settings = bench.worker_settings().model_copy(
        update={
            "api_read_timeout_seconds": 120.0,
            "rate_limit_per_second": 1.0,
            "rate_limit_burst": 1_000_000,
        }
    )
    environment = worker_environment(settings)
    cwd = REPO
    if source is not None:
        environment["PYTHONPATH"] = str(source)
        cwd = source
    dump = workdir / f"callgrind-{run}.out"
    log = workdir / f"worker-{run}.log"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={dump}",
        sys.executable,
        "-m",
        "service.cli",
        "run",
    ]
    child = ChildProcess(argv, environment, log, cwd=cwd)
    try:
        await child.ready(within=START_TIMEOUT_SECONDS)
        await callgrind_control("--instr=on", str(child.pid))
        start = finished(log)
        await wait_for_commands(log, start + window)
        await callgrind_control("--dump", str(child.pid))
        end = finished(log)
    finally:
        child.stop()
        await purge_queue(bench.amqp_url, bench.queue)
    return Count(end - start, total_instructions(dump))


async def main_async(options: Options, source: Path | None) -> None:
    with bench_vhost() as amqp_url, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        async with open_bench(options, amqp_url, Path(tmp)) as bench:
            bench.simulator.reset(0.0)
            counts = []
            for run in range(1, options.repeat + 1):
                progress(f"run {run}/{options.repeat}: worker under callgrind ...")
                count = await count_once(bench, Path(tmp), run, source)
                progress(
                    f"  {count.commands} commands, {count.instructions / 1e6:.0f} M "
                    f"instructions, {count.per_command / 1e6:.3f} M per command"
                )
                counts.append(count)
    median = statistics.median(c.per_command for c in counts)
    spread = max(c.per_command for c in counts) / min(c.per_command for c in counts) - 1
    origin = f"from {source}" if source else "from this checkout"
    print(
        f"\ninstructions per command (worker {origin}, workspace.create, 0 ms API): "
        f"{median / 1e6:.3f} M, median of {len(counts)} (spread {spread * 100:.1f} %)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--commands", type=int, default=300, help="commands counted per run")
    parser.add_argument("--repeat", type=int, default=2, help="runs, median taken (2)")
    parser.add_argument("--worker-source", type=Path, help="count this service/ package instead")
    args = parser.parse_args(argv)
    if args.commands < 10 or args.repeat < 1:
        parser.error("--commands must be at least 10 and --repeat at least 1")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("error: valgrind (callgrind) is not installed", file=sys.stderr)
        return 2
    options = Options(args.commands, args.repeat, (0.0,), ("d",), 32, memory=False)
    source = args.worker_source.resolve() if args.worker_source else None
    terminate_on_sigterm()
    try:
        asyncio.run(main_async(options, source))
    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
