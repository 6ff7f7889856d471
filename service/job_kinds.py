"""What differs between a ContextCapture job and a Reality Modeling v2 job, as data.

Both API generations run the same product's jobs; one follower (`service.jobs`) follows both.
Everything that differs between them is a field of a `JobKind`: the Accept header, the paths,
the progress answer's key and states, which fields of a progress count as a change, which states
end the job and which event each end is, and whether a failed job's messages are fetched. The
catalogue (`service.commands`) names the kind a command follows; a poll message carries its
kind's name, so a replica that takes it needs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ACCEPT_V1 = "application/vnd.bentley.itwin-platform.v1+json"
"""What the ContextCapture, iTwins and Library pages recommend."""
ACCEPT_V2 = "application/vnd.bentley.itwin-platform.v2+json"
"""What the Reality Modeling v2 pages recommend and Bentley's own SDK always sends."""

JobKindName = Literal["contextcapture", "modeling"]
MODELING_MESSAGES_PATH = "/reality-modeling/jobs/{jobId}/messages"

MODELING_JOB_STATES = (
    "Queued",
    "Active",
    "Success",
    "Failed",
    "TerminatingOnCancel",
    "TerminatingOnFailure",
    "Cancelled",
)
"""A v2 job's states, in the API's exact case (`TerminatingOn*` are not terminal)."""


@dataclass(frozen=True)
class JobKind:
    """How one API generation's jobs are followed."""

    name: JobKindName
    accept: str
    job_path: str
    progress_path: str
    progress_key: str
    """The key of the progress object in the progress answer."""
    progress_states: frozenset[str]
    """The states a progress answer may name; anything else is not the page's answer."""
    progress_fields: tuple[str, ...]
    """What a progress event's `result` carries besides `jobId`."""
    change_fields: tuple[str, ...]
    """The progress fields whose change is announced (and restarts the poll schedule)."""
    ended_states: frozenset[str]
    """Progress states after which the job itself is read for its end."""
    terminal_events: Mapping[str, str]
    """The ended job's `state` → its terminal event; any other state goes on being followed."""
    progress_event: str
    follow_failed_event: str
    messages_path: str | None = None
    """Read once for a job that ended in one of `messages_for`: why it failed."""
    messages_for: frozenset[str] = frozenset()


CONTEXTCAPTURE_JOBS = JobKind(
    name="contextcapture",
    accept=ACCEPT_V1,
    job_path="/contextcapture/jobs/{jobId}",
    progress_path="/contextcapture/jobs/{jobId}/progress",
    progress_key="jobProgress",
    progress_states=frozenset({"Unsubmitted", "Active", "Over"}),
    progress_fields=("percentage", "state", "step"),
    change_fields=("percentage", "step"),
    ended_states=frozenset({"Over"}),
    terminal_events={
        "success": "job.succeeded",
        "failed": "job.failed",
        "cancelled": "job.cancelled",
    },
    progress_event="job.progress",
    follow_failed_event="job.follow.failed",
)

MODELING_JOBS = JobKind(
    name="modeling",
    accept=ACCEPT_V2,
    job_path="/reality-modeling/jobs/{jobId}",
    progress_path="/reality-modeling/jobs/{jobId}/progress",
    progress_key="progress",
    progress_states=frozenset(MODELING_JOB_STATES),
    # No step in v2: a move from Active to TerminatingOnCancel at the same percentage is news.
    progress_fields=("percentage", "state"),
    change_fields=("percentage", "state"),
    ended_states=frozenset({"Success", "Failed", "Cancelled"}),
    terminal_events={
        "Success": "modeling.job.succeeded",
        "Failed": "modeling.job.failed",
        "Cancelled": "modeling.job.cancelled",
    },
    progress_event="modeling.job.progress",
    follow_failed_event="modeling.job.follow.failed",
    messages_path=MODELING_MESSAGES_PATH,
    messages_for=frozenset({"Failed"}),
)

JOB_KINDS: Mapping[JobKindName, JobKind] = {
    kind.name: kind for kind in (CONTEXTCAPTURE_JOBS, MODELING_JOBS)
}
