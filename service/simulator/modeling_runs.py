"""A Reality Modeling v2 job's life in simulated time, derived from timestamps whenever it is read.

As for ContextCapture jobs (`lifecycle`), nothing runs in the background: a run remembers when it
was created (v2 jobs start when created), how long it takes, how it ends and when it was
cancelled, and every read works out its state and percentage from the clock.

The course of a run of duration D (made up; the pages give no timings):

- Queued for the first tenth of D, at 0 %;
- Active until D, the percentage moving in steps of 10 over the other nine tenths;
- a run that succeeds is Success at D, 100 %;
- a run that fails turns TerminatingOnFailure for the last tenth of D, then Failed at D, its
  percentage where the failure began;
- a cancelled run turns TerminatingOnCancel at once for a tenth of D, then Cancelled, its
  percentage where the cancel found it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .lifecycle import Instant, JobOutcome

RunState = Literal[
    "Queued",
    "Active",
    "Success",
    "Failed",
    "TerminatingOnCancel",
    "TerminatingOnFailure",
    "Cancelled",
]
QUEUED_SHARE = 0.1
"""Of the run's duration, spent in the queue."""
TERMINATING_SHARE = 0.1
"""Of the run's duration, spent terminating after a cancel or before a failure."""
PERCENTAGE_QUANTUM = 10
COMPLETE = 100
RUNNING: frozenset[RunState] = frozenset({"Queued", "Active"})
"""What a cancel can stop."""
ENDED: frozenset[RunState] = frozenset({"Success", "Failed", "Cancelled"})


@dataclass(slots=True)
class ModelingRun:
    """What happened to one v2 job; its state, percentage and times follow from it."""

    created: Instant
    duration: float
    """Real seconds from creation to the end, fixed at creation (later config changes do not
    make a running job jump)."""
    outcome: JobOutcome
    """How it ends; the admin API may change it until it is over."""
    cancelled: Instant | None = None

    def cancel(self, at: Instant) -> None:
        self.cancelled = at

    def state(self, now: float) -> RunState:
        if self.cancelled is not None:
            ending = self.cancelled.clock + self.duration * TERMINATING_SHARE
            return "Cancelled" if now >= ending else "TerminatingOnCancel"
        ran = now - self.created.clock
        if ran < self.duration * QUEUED_SHARE:
            return "Queued"
        if ran >= self.duration:
            return "Failed" if self.outcome == "failed" else "Success"
        if self.outcome == "failed" and ran >= self.duration * (1 - TERMINATING_SHARE):
            return "TerminatingOnFailure"
        return "Active"

    def is_over(self, now: float) -> bool:
        return self.state(now) in ENDED

    def percentage(self, now: float) -> int:
        state = self.state(now)
        if state == "Success":
            return COMPLETE
        stop = now
        if self.cancelled is not None:
            stop = self.cancelled.clock
        elif self.outcome == "failed":
            stop = min(now, self.created.clock + self.duration * (1 - TERMINATING_SHARE))
        return self._percentage_at(stop)

    def started(self) -> datetime:
        """When it left the queue (a cancelled run may never have)."""
        return _after(self.created, self.duration * QUEUED_SHARE)

    def has_started(self, now: float) -> bool:
        left_queue = self.created.clock + self.duration * QUEUED_SHARE
        stop = self.cancelled.clock if self.cancelled is not None else now
        return stop >= left_queue

    def ended(self, now: float) -> datetime | None:
        if not self.is_over(now):
            return None
        if self.cancelled is not None:
            return _after(self.cancelled, self.duration * TERMINATING_SHARE)
        return _after(self.created, self.duration)

    def _percentage_at(self, moment: float) -> int:
        active = self.duration * (1 - QUEUED_SHARE)
        ran = moment - self.created.clock - self.duration * QUEUED_SHARE
        if ran <= 0:
            return 0
        whole = min(COMPLETE, int(ran / active * COMPLETE))
        return whole // PERCENTAGE_QUANTUM * PERCENTAGE_QUANTUM


def _after(instant: Instant, seconds: float) -> datetime:
    return instant.wall + timedelta(seconds=seconds)
