"""The objects the simulator stores, each able to render itself as the page's JSON.

They are plain mutable records, not the JSON itself, so that later endpoints (job submission,
cancellation) can change a field and render again. A job renders as of a moment, because its
state moves on with time (see `lifecycle`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .lifecycle import Execution, JobState, Lifecycle
from .modeling_runs import ModelingRun

CONTEXT_CAPTURE_VERSION = "20.1"
JOB_LOCATION = "East US"
JOB_FAILURE = {
    "code": "ProcessingFailed",
    "title": "Processing failed",
    "message": "The job failed (simulated failure).",
    "params": [],
}
"""The `executionInformation.errors` entry of a failed job, in the page's message model."""


def new_id() -> str:
    return str(uuid.uuid4())


def iso(moment: datetime) -> str:
    """A UTC time as the pages write it: ISO-8601, milliseconds, `Z`."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def timestamp() -> str:
    return iso(datetime.now(UTC))


@dataclass(slots=True)
class Workspace:
    id: str
    name: str
    itwin_id: str | None
    created: str

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "createdDateTime": self.created, "name": self.name}
        if self.itwin_id is not None:
            data["iTwinId"] = self.itwin_id
        data["contextCaptureVersion"] = CONTEXT_CAPTURE_VERSION
        return data


@dataclass(slots=True)
class Job:
    id: str
    name: str
    type: str
    workspace_id: str
    itwin_id: str | None
    email: str
    inputs: list[dict[str, str]]
    job_settings: dict[str, Any]
    """Already in the response's `jobSettings` shape (outputs carry their ids)."""
    cost_parameters: dict[str, Any] | None
    estimated_cost: float | None
    created: str
    last_modified: str
    """Of the last change through the API; a job's own end counts as a change too."""
    lifecycle: Lifecycle = field(default_factory=Lifecycle)

    def to_json(self, now: float) -> dict[str, Any]:
        """The job as it stands at `now` (a `time.monotonic()` reading)."""
        state = self.lifecycle.state(now)
        execution = self.lifecycle.execution(now)
        ended = execution.ended if execution is not None else None
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "state": state,
            "createdDateTime": self.created,
            "lastModifiedDateTime": iso(ended) if ended is not None else self.last_modified,
        }
        if self.itwin_id is not None:
            data["iTwinId"] = self.itwin_id
        data |= {
            "location": JOB_LOCATION,
            "email": self.email,
            "workspaceId": self.workspace_id,
        }
        if execution is not None:
            data["executionInformation"] = self._execution_json(execution, state)
        data |= {"inputs": self.inputs, "jobSettings": self.job_settings}
        if self.cost_parameters is not None:
            data["costEstimationParameters"] = self.cost_parameters
            data["estimatedCost"] = self.estimated_cost
        return data

    def _execution_json(self, execution: Execution, state: JobState) -> dict[str, Any]:
        # estimatedUnits is the simulator's cost estimate again: the page gives no formula.
        data: dict[str, Any] = {"submittedDateTime": iso(execution.submitted)}
        if execution.started is not None:
            data["startedDateTime"] = iso(execution.started)
        if execution.ended is not None:
            data["endedDateTime"] = iso(execution.ended)
        data["estimatedUnits"] = self.estimated_cost
        if state == "failed":
            data["errors"] = [JOB_FAILURE]
        return data


@dataclass(slots=True)
class Repository:
    id: str
    itwin_id: str
    class_: str
    sub_class: str
    uri: str
    display_name: str | None = None
    """Set by PATCH only: the creation page has no displayName."""
    authentication: dict[str, Any] | None = None
    options: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        # The get-repository page shows `authentication` as stored, secret value included.
        data: dict[str, Any] = {"id": self.id, "class": self.class_, "subClass": self.sub_class}
        if self.display_name is not None:
            data["displayName"] = self.display_name
        data["uri"] = self.uri
        if self.authentication is not None:
            data["authentication"] = self.authentication
        if self.options is not None:
            data["options"] = self.options
        return data


@dataclass(slots=True)
class Application:
    id: str
    display_name: str
    version: str
    created: str
    last_modified: str
    sequence: int = 0
    """Its place in creation order: what a continuation token points after."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "displayName": self.display_name,
            "version": self.version,
            "createdDateTime": self.created,
            "lastModifiedDateTime": self.last_modified,
        }


def _at_second(moment: datetime) -> str:
    """A time as the v2 pages write it: UTC, whole seconds, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class ModelingJob:
    """A Reality Modeling v2 job: no workspace, it runs from its creation."""

    id: str
    name: str | None
    type: str
    itwin_id: str
    user_id: str
    email: str
    specifications: dict[str, Any]
    """As answered: the create-time shape with the outputs made."""
    run: ModelingRun
    sequence: int
    """Its place in creation order: what a continuation token points after."""

    def to_json(self, now: float) -> dict[str, Any]:
        """The job as it stands at `now` (a `time.monotonic()` reading)."""
        data: dict[str, Any] = {"id": self.id}
        if self.name is not None:
            data["name"] = self.name
        data |= {"type": self.type, "iTwinId": self.itwin_id, "state": self.run.state(now)}
        data["userId"] = self.user_id
        execution: dict[str, Any] = {"createdDateTime": _at_second(self.run.created.wall)}
        if self.run.has_started(now):
            execution["startedDateTime"] = _at_second(self.run.started())
        ended = self.run.ended(now)
        if ended is not None:
            execution["endedDateTime"] = _at_second(ended)
            # Made up: a whole run costs one unit, a part of it its share.
            execution["processingUnits"] = self.run.percentage(now) / 100
        data["executionInfo"] = execution
        data["specifications"] = self.specifications
        return data

    def fields(self, now: float) -> Mapping[str, Any]:
        """What a `$filter` can look at."""
        return {
            "id": self.id,
            "iTwinId": self.itwin_id,
            "name": self.name,
            "email": self.email,
            "type": self.type,
            "state": self.run.state(now),
            # As the job shows it: a filter on a time it was answered matches it.
            "createdDateTime": self.run.created.wall.replace(microsecond=0),
        }
