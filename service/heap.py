"""The worker process's garbage collector, set once the worker is built, before it consumes.

Python's cyclic collector runs a young collection every 700 container allocations, and a full
one (over the whole heap) as the heap grows. A command allocates a few thousand containers
(messages, frames, requests, spans), so at the top tier's budget the young collections ran
about 25 times a second at about 0.35 ms each, and each full collection walked the ~115 000
objects built at start (modules, models, schemas, connections), pausing the loop 40-70 ms:
sleepers woke past their slot and gave it up. Measured with `./dev bench throughput --rate 83`
(bench/README.md): 0.17 of the 2.5 CPU-ms per command went to the collector.

What the worker built to start is frozen (moved out of the collector's reach: it lives as long
as the process), and young collections run every 10 000 allocations. Objects are still freed
when their last reference goes; only reference cycles wait for a collection.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Container allocations between young collections (Python's default: 700)."""


def settle() -> None:
    """Collect once, freeze what survives, and space young collections out. Process-wide:
    called by the `run` command before the worker consumes, never by a library user."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
