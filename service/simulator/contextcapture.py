"""ContextCapture (Reality Modeling): create, get and delete workspaces; create, get, submit,
cancel, update, delete and follow jobs; the engine limit.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import ApiError, ErrorBody, detail
from .itwins import FORBIDDEN_ITWIN_ID, ITWIN_NOT_FOUND, KNOWN_ITWIN_IDS
from .lifecycle import Instant
from .models import Job, Workspace, iso, new_id, timestamp
from .state import SimulatorState
from .validation import (
    Field,
    ListOf,
    Object,
    Unprocessable,
    Value,
    boolean,
    integer_between,
    non_empty_text,
    non_negative_number,
    one_of,
    text,
)

NO_CLUSTER_ITWIN_ID = "00000000-0000-4000-8000-00000000dead"
"""A workspace for this iTwin gets the page's example 422 (no processing cluster)."""

JOB_TYPES = ("Full", "Calibration", "Reconstruction")
QUALITIES = ("Draft", "Medium", "Extra")
OUTPUT_FORMATS = (
    "CCOrientations",
    "3MX",
    "3SM",
    "WebReady ScalableMesh",
    "Cesium 3D Tiles",
    "POD",
    "Orthophoto/DSM",
    "LAS",
    "FBX",
    "OBJ",
    "ESRI i3s",
    "DGN",
    "LODTreeExport",
    "PLY",
    "OPC",
    "OMR",
    "ContextScene",
)
DEFAULT_QUALITY = "Medium"
DEFAULT_PROCESSING_ENGINES = 0
"""The page: 0 means "use your engine limit"."""
EMAIL_DOMAIN = "apps.imsoidc.bentley.com"

# Price per gigapixel by mesh quality; a megapoint costs a tenth of a gigapixel. Made up, but
# fixed, so tests can predict estimatedCost.
COST_PER_GIGAPIXEL = {"Draft": 0.5, "Medium": 1.0, "Extra": 1.5}
MEGAPOINT_WEIGHT = 0.1

WORKSPACE_NOT_FOUND = ErrorBody("WorkspaceNotFound", "Requested workspace is not available.")
JOB_NOT_FOUND = ErrorBody("JobNotFound", "Requested job is not available.")
# Made up: no page shows the answer to a transition the job's state does not allow.
CANNOT_SUBMIT = ErrorBody("JobNotModifiable", "Only an unsubmitted job can be submitted.")
CANNOT_CANCEL = ErrorBody("JobNotModifiable", "Only an unsubmitted or active job can be cancelled.")
_CANNOT_CREATE_WORKSPACE = Unprocessable(
    ErrorBody("InvalidContextCaptureRequest", "Cannot create workspace."), "InvalidParameter"
)
_CANNOT_CREATE_JOB = Unprocessable(
    ErrorBody("InvalidContextCaptureRequest", "Cannot create job."), "InvalidParameter"
)
_CANNOT_UPDATE_JOB = Unprocessable(
    ErrorBody("InvalidContextCaptureRequest", "Cannot update job."), "InvalidParameter"
)
_NO_CLUSTER = detail("InvalidParameter", "No processing cluster in project location.")
_CANNOT_DELETE_JOB = ErrorBody("InvalidContextCaptureRequest", "Cannot delete job.")
_ALREADY_SUBMITTED = detail("InvalidChange", "Cannot delete an already submitted job.")
# Inferred: no page shows the answer to new settings for a job already submitted.
_SETTINGS_FROZEN = detail("InvalidChange", "Cannot change an already submitted job.")
_CHANGES = ("settings", "costEstimationParameters")

_WORKSPACE_SCHEMA = Object(
    Field("name", Value(non_empty_text)),
    Field("iTwinId", Value(non_empty_text), required=False),
)


@cache
def _settings_schema(engine_limit: int) -> Object:
    """A job's settings; the engine limit is a live knob, hence one schema per value."""
    return Object(
        Field("quality", Value(one_of(QUALITIES)), required=False),
        Field("processingEngines", Value(integer_between(0, engine_limit)), required=False),
        Field("outputs", ListOf(Value(one_of(OUTPUT_FORMATS))), required=False),
        Field(
            "cacheSettings",
            Object(
                Field("createCache", Value(boolean), required=False),
                Field("useCache", Value(text), required=False),
            ),
            required=False,
        ),
    )


_COST_SCHEMA = Object(
    Field("gigaPixels", Value(non_negative_number), required=False),
    Field("megaPoints", Value(non_negative_number), required=False),
    Field("meshQuality", Value(one_of(QUALITIES)), required=False),
)


@cache
def _job_schema(engine_limit: int) -> Object:
    """The job body's rules."""
    return Object(
        Field("type", Value(one_of(JOB_TYPES))),
        Field("name", Value(non_empty_text)),
        Field("workspaceId", Value(non_empty_text)),
        Field(
            "inputs",
            ListOf(
                Object(
                    Field("id", Value(non_empty_text)),
                    Field("description", Value(text), required=False),
                ),
                min_items=1,
            ),
        ),
        Field("settings", _settings_schema(engine_limit)),
        Field("costEstimationParameters", _COST_SCHEMA, required=False),
    )


@cache
def _update_schema(engine_limit: int) -> Object:
    """New settings and cost estimation parameters of a job, each optional."""
    return Object(
        Field("settings", _settings_schema(engine_limit), required=False),
        Field("costEstimationParameters", _COST_SCHEMA, required=False),
    )


def _invalid_parameters(paths: list[str]) -> list[dict[str, str]]:
    return [detail("InvalidParameter", f"Invalid '{path}' parameter.", path) for path in paths]


def _given(source: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The named fields that were given (not absent, not null), dropping anything else."""
    return {key: source[key] for key in keys if source.get(key) is not None}


def _outputs(formats: Any) -> list[dict[str, str]]:
    """The answer's outputs: each asked-for format with an id of its own."""
    return [{"format": fmt, "id": new_id()} for fmt in formats]


def _cost_parameters(given: dict[str, Any]) -> dict[str, Any]:
    return _given(given, ("gigaPixels", "megaPoints", "meshQuality"))


def estimated_cost(parameters: dict[str, Any]) -> float:
    """The simulator's deterministic stand-in for the platform's cost estimate."""
    price = COST_PER_GIGAPIXEL[parameters.get("meshQuality") or DEFAULT_QUALITY]
    gigapixels = parameters.get("gigaPixels") or 0
    megapoints = parameters.get("megaPoints") or 0
    return round(price * (gigapixels + MEGAPOINT_WEIGHT * megapoints), 4)


async def create_workspace(state: SimulatorState, request: Request, client_id: str) -> Response:
    body = await _CANNOT_CREATE_WORKSPACE.json_object(request)
    details = _invalid_parameters(_WORKSPACE_SCHEMA.errors(body))
    itwin_id = body.get("iTwinId")
    if itwin_id == NO_CLUSTER_ITWIN_ID:
        details.append(_NO_CLUSTER)
    if details:
        raise _CANNOT_CREATE_WORKSPACE.error(details)
    workspace = Workspace(new_id(), body["name"], itwin_id, timestamp())
    state.workspaces[workspace.id] = workspace
    return JSONResponse({"workspace": workspace.to_json()}, status_code=201)


async def get_workspace(state: SimulatorState, request: Request, client_id: str) -> Response:
    workspace = state.workspaces.get(request.path_params["workspace_id"])
    if workspace is None:
        raise ApiError(404, WORKSPACE_NOT_FOUND)
    return JSONResponse({"workspace": workspace.to_json()})


async def create_job(state: SimulatorState, request: Request, client_id: str) -> Response:
    body = await _CANNOT_CREATE_JOB.json_object(request)
    bad = _job_schema(state.config.engine_limit).errors(body)
    workspace_id = body.get("workspaceId")
    workspace = state.workspaces.get(workspace_id) if isinstance(workspace_id, str) else None
    if workspace is None and "workspaceId" not in bad:
        bad.append("workspaceId")
    if workspace is None or bad:
        raise _CANNOT_CREATE_JOB.error(_invalid_parameters(bad))

    settings = body["settings"]
    job_settings: dict[str, Any] = {
        "quality": settings.get("quality") or DEFAULT_QUALITY,
        "outputs": _outputs(settings.get("outputs") or ()),
        "processingEngines": settings.get("processingEngines") or DEFAULT_PROCESSING_ENGINES,
    }
    if settings.get("cacheSettings") is not None:
        job_settings["cacheSettings"] = _given(
            settings["cacheSettings"], ("createCache", "useCache")
        )
    cost_parameters = None
    if body.get("costEstimationParameters") is not None:
        cost_parameters = _cost_parameters(body["costEstimationParameters"])
    now = timestamp()
    job = Job(
        id=new_id(),
        name=body["name"],
        type=body["type"],
        workspace_id=workspace.id,
        itwin_id=workspace.itwin_id,
        email=f"{client_id}@{EMAIL_DOMAIN}",
        inputs=[_given(item, ("id", "description")) for item in body["inputs"]],
        job_settings=job_settings,
        cost_parameters=cost_parameters,
        estimated_cost=estimated_cost(cost_parameters) if cost_parameters is not None else None,
        created=now,
        last_modified=now,
    )
    state.jobs[job.id] = job
    return JSONResponse({"job": job.to_json(time.monotonic())}, status_code=201)


def find_job(state: SimulatorState, job_id: str) -> Job:
    job = state.jobs.get(job_id)
    if job is None:
        raise ApiError(404, JOB_NOT_FOUND)
    return job


async def get_job(state: SimulatorState, request: Request, client_id: str) -> Response:
    job = find_job(state, request.path_params["job_id"])
    return JSONResponse({"job": job.to_json(time.monotonic())})


async def get_job_progress(state: SimulatorState, request: Request, client_id: str) -> Response:
    job = find_job(state, request.path_params["job_id"])
    return JSONResponse({"jobProgress": job.lifecycle.progress(time.monotonic()).to_json()})


async def update_job(state: SimulatorState, request: Request, client_id: str) -> Response:
    """Submit (`"state": "active"`) or cancel (`"state": "cancelled"`) a job, or give it new
    `settings` and/or `costEstimationParameters` (a state goes alone).

    The state is matched case-insensitively: the page's example writes `Active`, Bentley's SDKs
    send lower case. The body is checked before the job is looked up, as for job creation.
    """
    body = await _CANNOT_UPDATE_JOB.json_object(request)
    changes = [name for name in _CHANGES if body.get(name) is not None]
    if body.get("state") is None and changes:
        return await _change_job(state, request, body)
    requested = body.get("state")
    target = requested.lower() if isinstance(requested, str) else None
    bad = [] if target in ("active", "cancelled") else ["state"]
    if bad or changes:
        # A state change goes alone (inferred: the page shows one kind of change per call).
        raise _CANNOT_UPDATE_JOB.error(_invalid_parameters(bad + changes))
    job = find_job(state, request.path_params["job_id"])
    at = Instant.now()
    if target == "active":
        _submit(state, job, at)
    else:
        _cancel(job, at)
    job.last_modified = iso(at.wall)
    return JSONResponse({"job": job.to_json(at.clock)})


async def _change_job(state: SimulatorState, request: Request, body: dict[str, Any]) -> Response:
    """New settings or cost estimation parameters: only for a job not yet submitted (inferred).

    Given settings fields replace the job's (outputs get new ids); cost estimation parameters
    are replaced whole and the estimated cost worked out again.
    """
    bad = _update_schema(state.config.engine_limit).errors(body)
    if bad:
        raise _CANNOT_UPDATE_JOB.error(_invalid_parameters(bad))
    job = find_job(state, request.path_params["job_id"])
    at = Instant.now()
    if job.lifecycle.state(at.clock) != "unsubmitted":
        raise _CANNOT_UPDATE_JOB.error([_SETTINGS_FROZEN])
    settings = body.get("settings")
    if settings is not None:
        changes = _given(settings, ("quality", "processingEngines"))
        if settings.get("outputs") is not None:
            changes["outputs"] = _outputs(settings["outputs"])
        if settings.get("cacheSettings") is not None:
            changes["cacheSettings"] = _given(
                settings["cacheSettings"], ("createCache", "useCache")
            )
        job.job_settings = {**job.job_settings, **changes}
    if body.get("costEstimationParameters") is not None:
        job.cost_parameters = _cost_parameters(body["costEstimationParameters"])
        job.estimated_cost = estimated_cost(job.cost_parameters)
    job.last_modified = iso(at.wall)
    return JSONResponse({"job": job.to_json(at.clock)})


async def delete_job(state: SimulatorState, request: Request, client_id: str) -> Response:
    """Only a job never submitted can be deleted (the page's 422 otherwise)."""
    job = find_job(state, request.path_params["job_id"])
    if job.lifecycle.submitted is not None or job.lifecycle.cancelled is not None:
        raise ApiError(422, _CANNOT_DELETE_JOB, [_ALREADY_SUBMITTED])
    del state.jobs[job.id]
    return Response(status_code=204)


async def delete_workspace(state: SimulatorState, request: Request, client_id: str) -> Response:
    if state.workspaces.pop(request.path_params["workspace_id"], None) is None:
        raise ApiError(404, WORKSPACE_NOT_FOUND)
    return Response(status_code=204)


async def get_engine_limit(state: SimulatorState, request: Request, client_id: str) -> Response:
    """The client's engine limit (the `engine_limit` knob), also per iTwin."""
    itwin_id = request.query_params.get("iTwinId")
    if itwin_id is not None and itwin_id not in KNOWN_ITWIN_IDS | {FORBIDDEN_ITWIN_ID}:
        raise ApiError(404, ITWIN_NOT_FOUND)
    return JSONResponse({"enginesLimit": {"maxEngines": state.config.engine_limit}})


def _submit(state: SimulatorState, job: Job, at: Instant) -> None:
    if job.lifecycle.state(at.clock) != "unsubmitted":
        raise ApiError(409, CANNOT_SUBMIT)
    config = state.config
    job.lifecycle.submit(at, config.job_duration_seconds * config.time_scale, config.job_outcome)


def _cancel(job: Job, at: Instant) -> None:
    if job.lifecycle.is_over(at.clock):
        raise ApiError(409, CANNOT_CANCEL)
    job.lifecycle.cancel(at)
