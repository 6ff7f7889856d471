"""The objects the simulator stores, each able to render itself as the page's JSON.

They are plain mutable records, not the JSON itself, so that later endpoints (job submission,
progress, updates) can change a field and render again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

CONTEXT_CAPTURE_VERSION = "20.1"
JOB_LOCATION = "East US"

JobState = Literal["unsubmitted", "active", "success", "failed", "cancelled"]
"""The job states of the ContextCapture API; only `unsubmitted` is reachable so far."""


def new_id() -> str:
    return str(uuid.uuid4())


def timestamp() -> str:
    """Now as the pages write it: ISO-8601 UTC, milliseconds, `Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    state: JobState = "unsubmitted"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "state": self.state,
            "createdDateTime": self.created,
            "lastModifiedDateTime": self.last_modified,
        }
        if self.itwin_id is not None:
            data["iTwinId"] = self.itwin_id
        data |= {
            "location": JOB_LOCATION,
            "email": self.email,
            "workspaceId": self.workspace_id,
            "inputs": self.inputs,
            "jobSettings": self.job_settings,
        }
        if self.cost_parameters is not None:
            data["costEstimationParameters"] = self.cost_parameters
            data["estimatedCost"] = self.estimated_cost
        return data


@dataclass(slots=True)
class Repository:
    id: str
    itwin_id: str
    class_: str
    sub_class: str
    uri: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "class": self.class_, "subClass": self.sub_class, "uri": self.uri}


@dataclass(slots=True)
class Application:
    id: str
    display_name: str
    version: str
    created: str
    last_modified: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "displayName": self.display_name,
            "version": self.version,
            "createdDateTime": self.created,
            "lastModifiedDateTime": self.last_modified,
        }
