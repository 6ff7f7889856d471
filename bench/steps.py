"""Where a worker's CPU goes, per step of a command's path, from py-spy's collapsed samples.

Each sample is a stack, outermost frame first (`py-spy record --format raw`: one line per
distinct stack, `frame;frame;...;frame count`). A sample belongs to the innermost step function
on its stack (the pipeline's own steps, the client calls they make, the log line, the
metrics), else to the framework around the handler (FastStream and aio-pika taking a message
in, acking), the broker connection's own reader, or the event loop itself.
"""

from __future__ import annotations

import re
from collections import Counter

FRAME = re.compile(r"^(?P<function>[^ ]+) \((?P<file>[^:)]+)(:\d+)?\)$")

# (step, file part, function names or None for any): tried innermost frame first.
STEPS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("log line", "structlog/", None),
    ("metrics", "prometheus_client/", None),
    ("tracing", "opentelemetry/", None),
    ("validate", "service/pipeline.py", ("_validate",)),
    ("claim", "service/pipeline.py", ("_claim",)),
    ("mark sent", "service/pipeline.py", ("before_sending",)),
    ("budget", "service/limiter.py", None),
    ("token", "service/auth.py", None),
    ("breaker", "service/breaker.py", None),
    ("call (httpx, aiohttp)", "service/api.py", ("_send",)),
    ("call (api client)", "service/api.py", None),
    ("record", "service/pipeline.py", ("_conclude",)),
    ("lease keeper", "service/idempotency.py", ("_renew_while_held",)),
    ("event", "service/events.py", None),
    ("pipeline (own code)", "service/pipeline.py", None),
    ("receive, ack (FastStream, aio-pika)", "faststream/", None),
    ("broker connection (aiormq reader)", "aiormq/", None),
    ("redis-py (outside a step)", "redis/", None),
)
# Publishing is inside `_conclude`; told apart by the library it goes through.
PUBLISH_FILES = ("faststream/", "aio_pika/", "aiormq/", "service/publisher.py")


def classify(stack: str) -> str:
    frames = [FRAME.match(frame) for frame in stack.split(";")]
    parsed = [(m["function"], m["file"]) for m in frames if m is not None]
    for function, file in reversed(parsed):
        for step, part, names in STEPS:
            if part in file and (names is None or function in names):
                if step == "record" and _publishing(parsed):
                    return "publish (FastStream, aio-pika)"
                return step
    return "event loop, other"


def _publishing(frames: list[tuple[str, str]]) -> bool:
    inside = False
    for _, file in frames:
        if "service/publisher.py" in file:
            inside = True
        if inside and any(part in file for part in PUBLISH_FILES):
            return True
    return False


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
    lines = [f"{'step':<40} {'samples':>8} {'share':>7} {'CPU ms/cmd':>11}"]
    lines.append("-" * len(lines[0]))
    for step, count in samples.most_common():
        share = count / total
        lines.append(f"{step:<40} {count:>8} {share:>6.1%} {share * cpu_ms_per_command:>11.3f}")
    return "\n".join(lines)
