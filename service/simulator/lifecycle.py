"""A ContextCapture job's life in simulated time, derived from timestamps whenever it is read.

Nothing runs in the background: a job remembers when it was submitted (and cancelled), how long
its run takes and how it ends, and every read works out its state and progress from the clock.
So a job's course is a pure function of time, which tests can predict, and an idle simulator
does no work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

JobState = Literal["unsubmitted", "active", "success", "failed", "cancelled"]
JobOutcome = Literal["success", "failed"]
ProgressState = Literal["Unsubmitted", "Active", "Over"]

PERCENTAGE_QUANTUM = 10
"""Progress moves in whole multiples of this, so a poller sees a handful of distinct values."""
STEPS: tuple[tuple[int, str], ...] = (
    (0, "Preparing"),
    (10, "Calibration"),
    (30, "Reconstruction"),
    (60, "Production"),
    (90, "Finalizing"),
)
"""Each step and the percentage it starts at. Made up: the API does not name its steps."""
STARTED_AT_PERCENTAGE = STEPS[1][0]
"""Preparing stands for the queue: a job counts as started once it has left that step."""
COMPLETE = 100


@dataclass(frozen=True, slots=True)
class Instant:
    """One moment on two clocks: monotonic to measure how long a job ran, wall to show when."""

    clock: float
    wall: datetime

    @classmethod
    def now(cls) -> Instant:
        return cls(time.monotonic(), datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Progress:
    percentage: int
    state: ProgressState
    step: str

    def to_json(self) -> dict[str, Any]:
        return {"percentage": self.percentage, "state": self.state, "step": self.step}


@dataclass(frozen=True, slots=True)
class Execution:
    """The wall times of a submitted job's execution, as far as it has got."""

    submitted: datetime
    started: datetime | None
    ended: datetime | None


def _percentage_after(ran: float, duration: float) -> int:
    """The progress of a job that has run `ran` of its `duration` seconds, quantised down."""
    whole = min(COMPLETE, int(ran / duration * COMPLETE))
    return whole // PERCENTAGE_QUANTUM * PERCENTAGE_QUANTUM


def _step_at(percentage: int) -> str:
    return next(name for start, name in reversed(STEPS) if start <= percentage)


@dataclass(slots=True)
class Lifecycle:
    """What happened to one job; its state, progress and execution times follow from it."""

    outcome: JobOutcome | None = None
    """How the job ends: forced by the admin API, else taken from the config at submission."""
    submitted: Instant | None = None
    duration: float = 0.0
    """Real seconds from submission to the end, fixed at submission so that later config
    changes do not make a running job jump."""
    cancelled: Instant | None = None

    def submit(self, at: Instant, duration: float, default_outcome: JobOutcome) -> None:
        self.submitted = at
        self.duration = duration
        self.outcome = self.outcome or default_outcome

    def cancel(self, at: Instant) -> None:
        self.cancelled = at

    def state(self, now: float) -> JobState:
        if self.cancelled is not None:
            return "cancelled"
        if self.submitted is None:
            return "unsubmitted"
        if now - self.submitted.clock < self.duration:
            return "active"
        return "failed" if self.outcome == "failed" else "success"

    def is_over(self, now: float) -> bool:
        return self.state(now) not in ("unsubmitted", "active")

    def progress(self, now: float) -> Progress:
        if self.submitted is None:
            return Progress(0, "Over" if self.cancelled is not None else "Unsubmitted", "")
        percentage = _percentage_after(self._ran(self.submitted, now), self.duration)
        progress_state: ProgressState = "Over" if self.is_over(now) else "Active"
        return Progress(percentage, progress_state, _step_at(percentage))

    def execution(self, now: float) -> Execution | None:
        """None until the job is submitted."""
        submitted = self.submitted
        if submitted is None:
            return None
        started = None
        if _percentage_after(self._ran(submitted, now), self.duration) >= STARTED_AT_PERCENTAGE:
            started = _after(submitted, self.duration * STARTED_AT_PERCENTAGE / COMPLETE)
        ended = None
        if self.cancelled is not None:
            ended = self.cancelled.wall
        elif self.is_over(now):
            ended = _after(submitted, self.duration)
        return Execution(submitted.wall, started, ended)

    def _ran(self, submitted: Instant, now: float) -> float:
        """How long the job has run: up to now, its cancellation or its end, whichever is first."""
        stop = now if self.cancelled is None else self.cancelled.clock
        return min(stop - submitted.clock, self.duration)


def _after(instant: Instant, seconds: float) -> datetime:
    return instant.wall + timedelta(seconds=seconds)
