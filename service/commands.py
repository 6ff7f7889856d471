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

import httpx
from pydantic import ValidationError

from service.errors import IDEMPOTENT_METHODS, InvalidCommand, WorkerError
from service.job_kinds import (
    ACCEPT_V1,
    ACCEPT_V2,
    CONTEXTCAPTURE_JOBS,
    MODELING_JOBS,
    MODELING_MESSAGES_PATH,
    JobKind,
)
from service.limiter import Priority
from service.messages import (
    SAFE_ID_PATTERN,
    ApplicationRef,
    Command,
    CreateApplication,
    CreateJob,
    CreateRepository,
    CreateWorkspace,
    GetEngines,
    GetWorkspace,
    JobRef,
    ListApplications,
    ListRepositories,
    RepositoryRef,
    UpdateApplication,
    UpdateJob,
    UpdateRepository,
)
from service.modeling import CreateModelingJob, ListModelingJobs, ModelingJobRef

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
NEXT_PAGE_PARAMETER = "continuationToken"
"""The query parameter of the API's next-page links, and the list commands' field for it."""

ResultShape = Literal["object", "ids", "ids_and_object", "list", "page"]
"""How a success event's `result` is made from the API's answer:

- `object`: the answer's inner object (`{"workspace": {...}}` gives the workspace), unchanged;
- `ids`: the ids the command named in the path (a DELETE answers 204 with no body);
- `ids_and_object`: those ids, then the inner object's fields (a job's messages name no job);
- `list`: `{result_key: [...]}`, the answer's list of objects, unchanged;
- `page`: a list plus `continuationToken`, the next page's token from the answer's
  `_links.next.href` (null on the last page).
"""


class UnexpectedAnswer(Exception):
    """The API answered success with a body that is not the shape its page gives."""


@dataclass(frozen=True)
class ApiRequest:
    """One call to the API, ready for the client: the path is already encoded."""

    method: HttpMethod
    path: str
    json: Mapping[str, Any] | None = None
    endpoint: str = ""
    """The path template, for metrics and logs: bounded cardinality, no ids."""
    query: tuple[tuple[str, str], ...] = ()
    """Query parameters, raw: the client percent-encodes them (never string-concatenated)."""
    repeatable: bool | None = None
    """Whether repeating the request after a lost answer is safe; None: as its method says."""
    priority: Priority = "command"
    """Its class in the API budget, for every attempt: a job poll waits behind commands."""
    accept: str = ACCEPT_V1
    """The Accept header: the media type of the API generation the request speaks to."""

    @property
    def safe_to_repeat(self) -> bool:
        if self.repeatable is not None:
            return self.repeatable
        return self.method in IDEMPOTENT_METHODS


@dataclass(frozen=True)
class Lookup:
    """How to find what a create made, when its answer was lost with the worker that sent it:
    list the resources (GET, safe to repeat) and pick the one whose `match` fields equal the
    command's. Exactly one match is the command's true outcome; none or several leave it
    unknown (`OutcomeUnknown`)."""

    path: str
    """Template; its `{placeholders}` are command fields (JSON names), as a spec's path."""
    list_key: str
    """The key of the list in the answer (`applications`, `repositories`)."""
    match: tuple[str, ...]
    """Fields (JSON names) of the command that the resource made from it carries unchanged."""
    query: tuple[str, ...] = ()
    """Command fields sent as query parameters, when given (narrowing the list)."""
    max_pages: int = 20
    """Pages read at most (a paged list gives its next page's `continuationToken`)."""

    def request(self, command: Command, continuation: str | None = None) -> ApiRequest:
        named = command.model_dump(mode="json", by_alias=True, exclude_none=True)
        path_fields = [name for _, name, _, _ in string.Formatter().parse(self.path) if name]
        values = {name: quote(str(named[name]), safe="") for name in path_fields}
        query = tuple((name, str(named[name])) for name in self.query if name in named)
        if continuation is not None:
            query += ((NEXT_PAGE_PARAMETER, continuation),)
        return ApiRequest("GET", self.path.format(**values), None, self.path, query=query)

    def found(self, command: Command, document: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The resources of one page of the list that the command made."""
        named = command.model_dump(mode="json", by_alias=True)
        items = document.get(self.list_key)
        if not isinstance(items, list):
            raise UnexpectedAnswer(f"The API's answer has no '{self.list_key}' list.")
        return [
            item
            for item in items
            if isinstance(item, dict) and all(item.get(key) == named[key] for key in self.match)
        ]


@dataclass(frozen=True)
class Confirmation:
    """A refusal that, after an earlier attempt of the same command that may have taken effect,
    can mean that attempt did: one read tells. A cancel repeated after its answer was lost finds
    the job no longer running (422), which is the first cancel's doing when the job is now
    being cancelled or cancelled; the read's object is then the command's result."""

    status: int
    path: str
    """The read's path template (the command's own path fields)."""
    result_key: str
    field: str
    values: frozenset[str]
    """The values of the read object's `field` that mean the command took effect."""


@dataclass(frozen=True)
class CommandSpec:
    """How one routing key becomes an API call and an event."""

    routing_key: str
    model: type[Command]
    method: HttpMethod
    path: str
    """Template whose `{placeholders}` are body fields (by their JSON names) moved to the path."""
    result_key: str
    """The key of the API's inner object or list in its answer (`workspace`, `job`, ...)."""
    success_event: str | None
    """None when success is announced by the job's own events instead (`job.follow`)."""
    fixed_body: Mapping[str, Any] | None = None
    """Fields the command implies, sent with the body (`{"state": "active"}` to submit)."""
    follows: JobKind | None = None
    """After success, follow the job until it ends (progress and terminal events), the way
    this kind of job is followed: the job the command names, or the one its answer made."""
    query: tuple[str, ...] = ()
    """Body fields (JSON names) sent as query parameters instead, when given."""
    result: ResultShape = "object"
    repeatable: bool | None = None
    """Overrides the method's rule for repeating after a lost answer (see `ApiRequest`)."""
    lookup: Lookup | None = None
    """For a create the API can tell about: how to find its outcome when the worker that sent
    it stopped before recording the answer (else that outcome is unknown)."""
    accept: str = ACCEPT_V1
    """The Accept header of its calls: each command speaks to one API generation."""
    confirm: Confirmation | None = None
    """A refusal that may be an earlier attempt's success, and the read that tells (a v2
    cancel's 422 after a repeat)."""
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
            return self.model.parse_json(body)
        except ValidationError as exc:
            details = validation_details(exc)
        # Raised outside the except block: the refusal does not chain the validation error,
        # which holds the whole body as its input.
        raise InvalidCommand(f"The {self.routing_key} command body is invalid.", details=details)

    def request(self, command: Command) -> ApiRequest:
        # Fields the producer left out, or sent as null, are not sent (most pages have no
        # nulls), but for those whose null the API acts on (a repository's `options`).
        data = command.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
        given = command.model_dump(mode="json", by_alias=True, exclude_unset=True)
        data |= {name: None for name in command.SENDS_NULL if name in given and given[name] is None}
        values = _path_values(data, self.path_fields)
        for name in self.path_fields:
            del data[name]
        query = tuple((name, str(data.pop(name))) for name in self.query if name in data)
        query += command.query_parameters()
        body = {**data, **(self.fixed_body or {})} if self.method in _METHODS_WITH_BODY else None
        return ApiRequest(
            self.method,
            self.path.format(**values),
            body,
            self.path,
            query=query,
            repeatable=self.repeatable,
            accept=self.accept,
        )

    def result_of(self, command: Command, document: Mapping[str, Any]) -> dict[str, Any]:
        """The success event's `result` from the API's answer; `UnexpectedAnswer` if the answer
        is not its page's shape."""
        named = command.model_dump(mode="json", by_alias=True)
        ids = {name: named[name] for name in self.path_fields}
        if self.result == "ids":
            return ids
        inner = document.get(self.result_key)
        if self.result in ("object", "ids_and_object"):
            if not isinstance(inner, dict):
                raise UnexpectedAnswer(f"The API's answer has no '{self.result_key}' object.")
            if self.follows is not None and not ids and not _is_safe_id(inner.get("id")):
                # The job to follow is the one the answer made: its id goes into paths.
                raise UnexpectedAnswer(f"The API's '{self.result_key}' has no usable 'id'.")
            if self.result == "ids_and_object":
                return {**ids, **{key: value for key, value in inner.items() if key not in ids}}
            return inner
        if not isinstance(inner, list) or not all(isinstance(item, dict) for item in inner):
            raise UnexpectedAnswer(f"The API's answer has no '{self.result_key}' list.")
        if self.result == "list":
            return {self.result_key: inner}
        return {self.result_key: inner, NEXT_PAGE_PARAMETER: next_token(document)}

    def job_to_follow(self, command: Command, result: Mapping[str, Any]) -> str:
        """The id of the job a command that `follows` follows after success: the one it names,
        else the one its answer made (checked by `result_of`)."""
        named = command.model_dump(by_alias=True)
        return str(named[JOB_ID] if JOB_ID in self.path_fields else result["id"])

    def confirmation(self, command: Command, refusal: WorkerError) -> ApiRequest | None:
        """The read that tells whether this refusal means an earlier attempt took effect; None
        when it cannot.

        Only a command whose request went out more than once can have had an earlier attempt
        take effect. The client repeats a cancel after a lost answer or a 5xx; it also repeats
        after answers that prove nothing was done (429, 503, 401), which this count cannot
        tell apart: then a job someone else cancelled in the meantime is reported as this
        command's cancel. It is cancelled either way.
        """
        check = self.confirm
        if check is None or refusal.status != check.status or refusal.attempts < 2:
            return None
        named = command.model_dump(mode="json", by_alias=True)
        path = check.path.format(**_path_values(named, self.path_fields))
        return ApiRequest("GET", path, None, check.path, accept=self.accept)

    def confirmed(self, document: Mapping[str, Any]) -> bool:
        """Whether the read of `confirmation` shows the command took effect."""
        check = self.confirm
        inner = document.get(check.result_key) if check is not None else None
        return (
            check is not None and isinstance(inner, dict) and inner.get(check.field) in check.values
        )


def _path_values(named: Mapping[str, Any], path_fields: tuple[str, ...]) -> dict[str, str]:
    # Path values passed SafeId already; quoting them too keeps a future, looser id type from
    # ever adding a path segment.
    return {name: quote(str(named[name]), safe="") for name in path_fields}


_SAFE_ID = re.compile(SAFE_ID_PATTERN)


def _is_safe_id(value: Any) -> bool:
    return isinstance(value, str) and _SAFE_ID.fullmatch(value) is not None


def next_token(document: Mapping[str, Any]) -> str | None:
    """The continuation token of the answer's next-page link; None on the last page.

    Only the token is taken: the worker never follows the link itself, so an answer cannot
    point the worker's authenticated requests at another host or path.
    """
    links = document.get("_links")
    following = links.get("next") if isinstance(links, dict) else None
    if following is None:
        return None
    href = following.get("href") if isinstance(following, dict) else None
    if not isinstance(href, str):
        raise UnexpectedAnswer("The API's next-page link has no 'href'.")
    try:
        token: str | None = httpx.URL(href).params.get(NEXT_PAGE_PARAMETER)
    except httpx.InvalidURL:
        token = None
    if not token:
        raise UnexpectedAnswer(f"The API's next-page link carries no '{NEXT_PAGE_PARAMETER}'.")
    return token


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


JOB_ID = "jobId"
JOB_PATH = CONTEXTCAPTURE_JOBS.job_path
PROGRESS_PATH = CONTEXTCAPTURE_JOBS.progress_path
MODELING_JOBS_PATH = "/reality-modeling/jobs"
MODELING_JOB_PATH = MODELING_JOBS.job_path
WORKSPACE_PATH = "/contextcapture/workspaces/{workspaceId}"
REPOSITORIES_PATH = "/itwins/{iTwinId}/repositories"
REPOSITORY_PATH = "/itwins/{iTwinId}/repositories/{repositoryId}"
APPLICATIONS_PATH = "/library/applications"
APPLICATION_PATH = "/library/applications/{applicationId}"

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
        path=WORKSPACE_PATH,
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
        path=REPOSITORIES_PATH,
        result_key="repository",
        success_event="repository.created",
        lookup=Lookup(
            REPOSITORIES_PATH,
            "repositories",
            match=("class", "subClass", "uri"),
            query=("class", "subClass"),
        ),
    ),
    CommandSpec(
        routing_key="application.create",
        model=CreateApplication,
        method="POST",
        path=APPLICATIONS_PATH,
        result_key="application",
        success_event="application.created",
        lookup=Lookup(APPLICATIONS_PATH, "applications", match=("displayName", "version")),
    ),
    CommandSpec(
        routing_key="job.submit",
        model=JobRef,
        method="PATCH",
        path=JOB_PATH,
        result_key="job",
        success_event="job.submitted",
        fixed_body={"state": "active"},
        follows=CONTEXTCAPTURE_JOBS,
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
        follows=CONTEXTCAPTURE_JOBS,
    ),
    # The rest of each resource's lifecycle (contract.md). PATCH is not repeated after a lost
    # answer in general: `job.submit` and `job.cancel` change a state, and their repeat would be
    # refused (409) though the first one worked. These two PATCHes only set fields to given
    # values, so a repeat leaves the object as one call would: safe, like a PUT.
    CommandSpec(
        routing_key="workspace.delete",
        model=GetWorkspace,
        method="DELETE",
        path=WORKSPACE_PATH,
        result_key="",
        success_event="workspace.deleted",
        result="ids",
    ),
    CommandSpec(
        routing_key="job.update",
        model=UpdateJob,
        method="PATCH",
        path=JOB_PATH,
        result_key="job",
        success_event="job.updated",
        repeatable=True,
    ),
    CommandSpec(
        routing_key="job.delete",
        model=JobRef,
        method="DELETE",
        path=JOB_PATH,
        result_key="",
        success_event="job.deleted",
        result="ids",
    ),
    CommandSpec(
        routing_key="engines.get",
        model=GetEngines,
        method="GET",
        path="/contextcapture/limits/engines",
        result_key="enginesLimit",
        success_event="engines.retrieved",
        query=("iTwinId",),
    ),
    CommandSpec(
        routing_key="repository.list",
        model=ListRepositories,
        method="GET",
        path=REPOSITORIES_PATH,
        result_key="repositories",
        success_event="repository.listed",
        query=("class", "subClass"),
        result="list",
    ),
    CommandSpec(
        routing_key="repository.get",
        model=RepositoryRef,
        method="GET",
        path=REPOSITORY_PATH,
        result_key="repository",
        success_event="repository.retrieved",
    ),
    CommandSpec(
        routing_key="repository.update",
        model=UpdateRepository,
        method="PATCH",
        path=REPOSITORY_PATH,
        result_key="repository",
        success_event="repository.updated",
        repeatable=True,
    ),
    CommandSpec(
        routing_key="repository.delete",
        model=RepositoryRef,
        method="DELETE",
        path=REPOSITORY_PATH,
        result_key="",
        success_event="repository.deleted",
        result="ids",
    ),
    CommandSpec(
        routing_key="application.list",
        model=ListApplications,
        method="GET",
        path=APPLICATIONS_PATH,
        result_key="applications",
        success_event="application.listed",
        query=(NEXT_PAGE_PARAMETER,),
        result="page",
    ),
    CommandSpec(
        routing_key="application.get",
        model=ApplicationRef,
        method="GET",
        path=APPLICATION_PATH,
        result_key="application",
        success_event="application.retrieved",
    ),
    CommandSpec(
        routing_key="application.update",
        model=UpdateApplication,
        method="PUT",
        path=APPLICATION_PATH,
        result_key="application",
        success_event="application.updated",
    ),
    CommandSpec(
        routing_key="application.delete",
        model=ApplicationRef,
        method="DELETE",
        path=APPLICATION_PATH,
        result_key="",
        success_event="application.deleted",
        result="ids",
    ),
    # Reality Modeling v2 (contract.md): no workspace, no submit; a created job is queued at
    # once and followed. A cancel is a DELETE the client may repeat after a lost answer; the
    # repeat then finds the job no longer running, which `confirm` reads as the first one's doing.
    CommandSpec(
        routing_key="modeling.job.create",
        model=CreateModelingJob,
        method="POST",
        path=MODELING_JOBS_PATH,
        result_key="job",
        success_event="modeling.job.created",
        follows=MODELING_JOBS,
        accept=ACCEPT_V2,
    ),
    CommandSpec(
        routing_key="modeling.job.get",
        model=ModelingJobRef,
        method="GET",
        path=MODELING_JOB_PATH,
        result_key="job",
        success_event="modeling.job.retrieved",
        accept=ACCEPT_V2,
    ),
    CommandSpec(
        routing_key="modeling.job.cancel",
        model=ModelingJobRef,
        method="DELETE",
        path=MODELING_JOB_PATH,
        result_key="job",
        success_event="modeling.job.cancel.accepted",
        accept=ACCEPT_V2,
        confirm=Confirmation(
            status=422,
            path=MODELING_JOB_PATH,
            result_key="job",
            field="state",
            values=frozenset({"TerminatingOnCancel", "Cancelled"}),
        ),
    ),
    CommandSpec(
        routing_key="modeling.job.messages",
        model=ModelingJobRef,
        method="GET",
        path=MODELING_MESSAGES_PATH,
        result_key="messages",
        success_event="modeling.job.messages.retrieved",
        result="ids_and_object",
        accept=ACCEPT_V2,
    ),
    CommandSpec(
        routing_key="modeling.job.list",
        model=ListModelingJobs,
        method="GET",
        path=MODELING_JOBS_PATH,
        result_key="jobs",
        success_event="modeling.job.listed",
        result="page",
        accept=ACCEPT_V2,
    ),
    CommandSpec(
        routing_key="modeling.job.follow",
        model=ModelingJobRef,
        method="GET",
        path=MODELING_JOBS.progress_path,
        result_key=MODELING_JOBS.progress_key,
        success_event=None,
        follows=MODELING_JOBS,
        accept=ACCEPT_V2,
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
    # fullmatch: `$` would also match before a final line break.
    if SAFE_ROUTING_KEY.fullmatch(routing_key):
        return f"{routing_key}.failed"
    return UNKNOWN_COMMAND_EVENT
