"""Where a worker's CPU goes, per step of a command's path, from py-spy's collapsed samples.

Each sample is a stack, outermost frame first (`py-spy record --format raw`: one line per
distinct stack, `frame;frame;...;frame count`). A sample belongs to the log line, the metrics or
tracing when they are on its stack; else to the innermost step function of ours on it (what the
libraries do below a step is the step's: the claim's redis-py call is the claim); else to the
framework or connection it is in (FastStream taking a message in, aiormq's reader), else to the
event loop itself (uvloop runs in C: its sockets and callbacks show as that one frame).
"""

from __future__ import annotations

import re
from collections import Counter

FRAME = re.compile(r"^(?P<function>[^ ]+) \((?P<file>[^:)]+)(:\d+)?\)$")

CROSS_CUTTING: tuple[tuple[str, str], ...] = (
    ("log line", "structlog/"),
    ("metrics", "prometheus_client/"),
    ("tracing", "opentelemetry/"),
)
"""Anywhere on the stack, innermost: what a step spends on these is theirs."""

# (step, file part, function names or None for any): the innermost frame of ours that matches.
OWN: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("enter (delivery, ids)", "service/delivery.py", None),
    ("enter (delivery, ids)", "service/pipeline.py", ("_enter", "handle")),
    ("validate", "service/pipeline.py", ("_validate",)),
    ("validate", "service/commands.py", ("parse", "request")),
    ("claim", "service/pipeline.py", ("_claim", "_answer_again")),
    ("claim", "service/idempotency.py", ("claim", "claim_when_free")),
    ("budget", "service/limiter.py", None),
    ("budget", "service/api.py", ("_wait_for_budget",)),
    ("token", "service/auth.py", None),
    ("breaker", "service/breaker.py", None),
    ("mark sent", "service/idempotency.py", ("mark_sent",)),
    ("mark sent", "service/pipeline.py", ("before_sending",)),
    ("call (HTTP)", "service/api.py", ("_send",)),
    ("call (HTTP)", "service/http_client.py", None),
    ("call (api client)", "service/api.py", None),
    ("record", "service/idempotency.py", ("record", "release")),
    ("lease keeper", "service/idempotency.py", ("_renew_while_held",)),
    ("event", "service/events.py", None),
    ("follow", "service/jobs.py", None),
    ("publish", "service/publisher.py", None),
    ("publish", "service/tracing.py", ("publish_scope",)),
    ("pipeline (own code)", "service/pipeline.py", None),
    ("pipeline (own code)", "service/app.py", None),
)

LIBRARIES: tuple[tuple[str, str], ...] = (
    ("receive, ack (FastStream)", "faststream/"),
    ("broker I/O (aio-pika, aiormq, pamqp)", "aiormq/"),
    ("broker I/O (aio-pika, aiormq, pamqp)", "aio_pika/"),
    ("broker I/O (aio-pika, aiormq, pamqp)", "pamqp/"),
    ("redis-py outside a step", "redis/"),
    ("HTTP (aiohttp's own: writing a body, reading an answer)", "aiohttp/"),
)
"""Samples with no step function of ours on the stack: the framework and the connections'
own readers (a delivery coming in, a confirm, an answer being parsed before its caller runs)."""


def classify(stack: str) -> str:
    frames = [FRAME.match(frame) for frame in stack.split(";")]
    parsed = [(m["function"], m["file"]) for m in frames if m is not None]
    for _, file in reversed(parsed):
        for step, part in CROSS_CUTTING:
            if part in file:
                return step
    for function, file in reversed(parsed):
        name = function.rpartition(".")[2]  # py-spy names a method `Class.method`
        for step, part, names in OWN:
            if part in file and (names is None or name in names):
                return step
    for _, file in reversed(parsed):
        for step, part in LIBRARIES:
            if part in file:
                return step
    return "event loop (uvloop's C: sockets, callbacks)"


def step_samples(collapsed: str) -> Counter[str]:
    samples: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[classify(stack)] += int(count)
    return samples


def step_table(collapsed: str, cpu_ms_per_command: float) -> str:
    """The share of samples per step, and that share of the measured CPU per command."""
    samples = step_samples(collapsed)
    total = sum(samples.values()) or 1
    lines = [f"{'step':<56} {'samples':>8} {'share':>7} {'CPU ms/cmd':>11}"]
    lines.append("-" * len(lines[0]))
    for step, count in samples.most_common():
        share = count / total
        lines.append(f"{step:<56} {count:>8} {share:>6.1%} {share * cpu_ms_per_command:>11.3f}")
    return "\n".join(lines)
