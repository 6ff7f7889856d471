"""The catalogue: each command is a declarative description, all share one pipeline.

A `CommandSpec` says which model validates the body, which API call it becomes and which events
announce the outcome. Adding a command is adding an entry here, not writing a handler.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from pydantic import ValidationError

from service.errors import InvalidCommand
from service.limiter import Priority
from service.messages import (
    Command,
    CreateApplication,
    CreateJob,
    CreateRepository,
    CreateWorkspace,
    GetWorkspace,
    JobRef,
)

HttpMethod = Literal["GET", "POST", "PATCH", "DELETE"]


@dataclass(frozen=True)
class ApiRequest:
    """One call to the API, ready for the client: the path is already encoded."""

    method: HttpMethod
    path: str
    json: Mapping[str, Any] | None = None
    endpoint: str = ""
    """The path template, for metrics and logs: bounded cardinality, no ids."""
    priority: Priority = "command"
    """Its class in the API budget, for every attempt: a job poll waits behind commands."""


@dataclass(frozen=True)
class CommandSpec:
    """How one routing key becomes an API call and an event."""

    routing_key: str
    model: type[Command]
    method: HttpMethod
    path: str
    """Template whose `{placeholders}` are body fields (by their JSON names) moved to the path."""
    result_key: str
    """The key of the API's inner object in its answer (`workspace`, `job`, ...)."""
    success_event: str | None
    """None when success is announced by the job's own events instead (`job.follow`)."""
    fixed_body: Mapping[str, Any] | None = None
    """Fields the command implies, sent with the body (`{"state": "active"}` to submit)."""
    follows_job: bool = False
    """After success, follow the job until it ends (progress and terminal events)."""
    path_fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(name for _, name, _, _ in string.Formatter().parse(self.path) if name)
        object.__setattr__(self, "path_fields", names)

    @property
    def failure_event(self) -> str:
        return f"{self.routing_key}.failed"

    def parse(self, body: bytes) -> Command:
        """Validate a raw body; every broken rule becomes one detail naming its field."""
        try:
            return self.model.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidCommand(
                f"The {self.routing_key} command body is invalid.",
                details=validation_details(exc),
            ) from None

    def request(self, command: Command) -> ApiRequest:
        # Fields the producer left out, or sent as null, are not sent: the pages have no nulls.
        data = command.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
        # Path values passed SafeId already; quoting them too keeps a future, looser id type
        # from ever adding a path segment.
        values = {name: quote(str(data.pop(name)), safe="") for name in self.path_fields}
        body = {**data, **(self.fixed_body or {})} if self.method in {"POST", "PATCH"} else None
        return ApiRequest(self.method, self.path.format(**values), body, self.path)


_MISSING_TYPES = frozenset({"missing"})
_JSON_TYPES = frozenset({"json_invalid", "json_type"})


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors in the API's own detail vocabulary, targets as dotted JSON paths."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        target = ".".join(str(part) for part in error["loc"]) or None
        if error["type"] in _MISSING_TYPES:
            code = "MissingRequiredProperty"
        elif error["type"] in _JSON_TYPES:
            code = "InvalidJson"
        elif error["type"] == "extra_forbidden":
            code = "UnknownProperty"
        else:
            code = "InvalidValue"
        message = error["msg"].removeprefix("Value error, ")
        details.append({"code": code, "message": message, "target": target})
    return details


JOB_PATH = "/contextcapture/jobs/{jobId}"
PROGRESS_PATH = "/contextcapture/jobs/{jobId}/progress"

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(
        routing_key="workspace.create",
        model=CreateWorkspace,
        method="POST",
        path="/contextcapture/workspaces",
        result_key="workspace",
        success_event="workspace.created",
    ),
    CommandSpec(
        routing_key="workspace.get",
        model=GetWorkspace,
        method="GET",
        path="/contextcapture/workspaces/{workspaceId}",
        result_key="workspace",
        success_event="workspace.retrieved",
    ),
    CommandSpec(
        routing_key="job.create",
        model=CreateJob,
        method="POST",
        path="/contextcapture/jobs",
        result_key="job",
        success_event="job.created",
    ),
    CommandSpec(
        routing_key="repository.create",
        model=CreateRepository,
        method="POST",
        path="/itwins/{iTwinId}/repositories",
        result_key="repository",
        success_event="repository.created",
    ),
    CommandSpec(
        routing_key="application.create",
        model=CreateApplication,
        method="POST",
        path="/library/applications",
        result_key="application",
        success_event="application.created",
    ),
    CommandSpec(
        routing_key="job.submit",
        model=JobRef,
        method="PATCH",
        path=JOB_PATH,
        result_key="job",
        success_event="job.submitted",
        fixed_body={"state": "active"},
        follows_job=True,
    ),
    CommandSpec(
        routing_key="job.cancel",
        model=JobRef,
        method="PATCH",
        path=JOB_PATH,
        result_key="job",
        success_event="job.cancel.accepted",
        fixed_body={"state": "cancelled"},
    ),
    CommandSpec(
        routing_key="job.get",
        model=JobRef,
        method="GET",
        path=JOB_PATH,
        result_key="job",
        success_event="job.retrieved",
    ),
    CommandSpec(
        routing_key="job.follow",
        model=JobRef,
        method="GET",
        path=PROGRESS_PATH,
        result_key="jobProgress",
        success_event=None,
        follows_job=True,
    ),
)

BY_ROUTING_KEY: Mapping[str, CommandSpec] = {spec.routing_key: spec for spec in COMMANDS}

UNKNOWN_COMMAND_EVENT = "command.failed"
"""The failure event of a routing key that is no command and no plain dotted word either."""
SAFE_ROUTING_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$")
"""Routing keys are producer input that becomes an event's routing key: only plain words."""


def failure_event_type(spec: CommandSpec | None, routing_key: str) -> str:
    """`<routing key>.failed`; an unknown key gets it only when it is plain dotted words."""
    if spec is not None:
        return spec.failure_event
    if SAFE_ROUTING_KEY.match(routing_key):
        return f"{routing_key}.failed"
    return UNKNOWN_COMMAND_EVENT
