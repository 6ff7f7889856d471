"""Reality Modeling v2 (`/reality-modeling/`): the eight operations of the v2 reference.

Create a job (it is queued at once and runs on the simulated clock: `modeling_runs`), get it,
cancel it (DELETE, 200 with the job TerminatingOnCancel), its progress and messages, list jobs
(`$filter` as `filters` parses it, `$top`, continuation tokens in `_links.next.href`), an iTwin's
bucket and the preset files. Facts: `shared/design/api-beyond.md`; what it marks inferred, and
what it leaves open, is marked so here.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .contextcapture import EMAIL_DOMAIN, JOB_NOT_FOUND, NO_CLUSTER_ITWIN_ID
from .errors import INSUFFICIENT_PERMISSIONS, ApiError, ErrorBody, detail
from .filters import FilterError, parse_filter
from .itwins import FORBIDDEN_ITWIN_ID, ITWIN_NOT_FOUND, KNOWN_ITWIN_IDS
from .lifecycle import Instant
from .modeling_runs import RUNNING, ModelingRun
from .models import JOB_FAILURE, ModelingJob, new_id
from .state import SimulatorState
from .validation import (
    Field,
    ListOf,
    Object,
    Spec,
    Unprocessable,
    Value,
    boolean,
    non_empty_text,
    non_negative_number,
    one_of,
    text,
)

MODELING_TYPES = (
    "FillImageProperties",
    "ImportPointCloud",
    "Calibration",
    "Tiling",
    "Production",
    "Reconstruction",
    "Constraints",
    "TouchUpExport",
    "TouchUpImport",
    "WaterConstraints",
    "GaussianSplats",
)
EXPORT_FORMATS = ("3DTiles", "OBJ", "3MX", "I3S", "OSGB", "LAS", "PLY", "OPC", "OrthophotoDSM")
DEFAULT_TOP = 100
MAX_TOP = 1000
FILTER, TOP, TOKEN = "$filter", "$top", "continuationToken"

# Inferred from the sibling v2 APIs (the facts say so): a bad body is a 400 with one
# `InvalidProperty` detail per bad field.
INVALID_REQUEST = ErrorBody("InvalidRealityModelingRequest", "Invalid request to Reality Modeling.")
_INVALID = Unprocessable(INVALID_REQUEST, "InvalidProperty", status=400)
# Inferred: the body of the 422 a cancel of a job that is not running gets is not published.
NOT_RUNNING = ErrorBody(
    "InvalidRealityModelingRequest", "The job is not running, so it cannot be cancelled."
)
_NO_BUCKET = ErrorBody("InvalidRealityModelingRequest", "Could not retrieve the bucket.")
_NO_DATA_CENTER = detail(
    "InvalidProperty", "The iTwin's data center is not supported by Reality Modeling.", "iTwinId"
)
PRESET_FILES = (
    {"id": "b7e4b3b2-6a55-4f0e-9d5a-0f1e2c3d4a01", "name": "HighQualityMesh", "type": "Preset",
     "description": "Reconstruction with extra geometric precision."},
    {"id": "b7e4b3b2-6a55-4f0e-9d5a-0f1e2c3d4a02", "name": "LegacyTiling", "type": "Preset",
     "description": "Tiling as ContextCapture did it.", "deprecated": True},
)  # fmt: skip
"""What `GET /reality-modeling/files` lists: made up, fixed."""


def bucket_path(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("bkt:") and len(value) > len("bkt:")


def json_object(value: Any) -> bool:
    return isinstance(value, dict)


def names_or_object(value: Any) -> bool:
    """A creation's `outputs`: a list of output names, or an object (by type)."""
    return isinstance(value, dict) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )


def _optional(name: str, spec: Spec) -> Field:
    return Field(name, spec, required=False)


_BUCKET = Value(bucket_path)
_ID = Value(non_empty_text)
_PRESETS = ListOf(Value(text))
_EXPORTS = ListOf(
    Object(Field("format", Value(one_of(EXPORT_FORMATS))), _optional("options", Value(json_object)))
)
_TILING_OPTIONS = Object(
    _optional("modelingReferenceType", Value(one_of(("Orthophoto", "Complete")))),
    _optional(
        "tilingMode",
        Value(one_of(("NoTiling", "RegularPlanarGrid", "RegularVolumetricGrid", "Adaptive"))),
    ),
    _optional("tilingValue", Value(non_negative_number)),
    _optional("geometricPrecision", Value(one_of(("Medium", "High", "Extra", "Ultra")))),
)
_ENVELOPE = Object(
    Field("type", Value(one_of(MODELING_TYPES))),
    Field("iTwinId", _ID),
    _optional("name", Value(lambda value: isinstance(value, str) and len(value) >= 3)),
    Field(
        "specifications",
        Object(
            Field("inputs", Value(json_object)),
            Field("outputs", Value(names_or_object)),
            _optional("options", Value(json_object)),
        ),
    ),
)
_SPECIFICATIONS: dict[str, Object] = {
    "Reconstruction": Object(
        Field("inputs", Object(
            Field("scene", _ID), _optional("regionOfInterest", _BUCKET),
            _optional("extent", _BUCKET), _optional("modelingReference", _ID),
            _optional("presets", _PRESETS), _optional("crsData", _BUCKET),
        )),
        Field("outputs", Object(
            _optional("modelingReference", Value(boolean)), _optional("exports", _EXPORTS)
        )),
        _optional("options", _TILING_OPTIONS),
    ),
    "Calibration": Object(
        Field("inputs", Object(
            Field("scene", _ID), _optional("presets", _PRESETS), _optional("crsData", _BUCKET)
        )),
        Field("outputs", ListOf(Value(one_of(("scene", "report", "texturedTiePoints"))))),
    ),
    "Tiling": Object(
        Field("inputs", Object(
            Field("scene", _ID), _optional("regionOfInterest", _BUCKET),
            _optional("presets", _PRESETS), _optional("crsData", _BUCKET),
        )),
        Field("outputs", ListOf(Value(one_of(("modelingReference",))))),
        _optional("options", _TILING_OPTIONS),
    ),
    "Production": Object(
        Field("inputs", Object(
            Field("scene", _ID), Field("modelingReference", _ID), _optional("extent", _BUCKET),
            _optional("presets", _PRESETS), _optional("crsData", _BUCKET),
        )),
        Field("outputs", Object(Field("exports", _EXPORTS))),
    ),
    "FillImageProperties": Object(
        Field("inputs", Object(
            _optional("imageCollections", ListOf(_ID)), _optional("sceneToProcess", _ID),
            _optional("sceneToComplete", _ID), _optional("presets", _PRESETS),
        )),
        Field("outputs", ListOf(Value(one_of(("scene",))))),
    ),
    "ImportPointCloud": Object(
        Field("inputs", Object(Field("scene", _ID), _optional("crsData", _BUCKET))),
        Field("outputs", ListOf(Value(one_of(("scanCollection", "scene"))))),
    ),
}  # fmt: skip
"""The fields the facts name per type; the other types' specifications are open."""
_IMAGE_SOURCES = ("imageCollections", "sceneToProcess", "sceneToComplete")


def _bad_fields(body: dict[str, Any]) -> list[str]:
    """Every bad field's path, in order, each once."""
    bad = _ENVELOPE.errors(body)
    kind, specifications = body.get("type"), body.get("specifications")
    if isinstance(kind, str) and kind in _SPECIFICATIONS and isinstance(specifications, dict):
        bad += _SPECIFICATIONS[kind].errors(specifications, "specifications")
        inputs = specifications.get("inputs")
        if (
            kind == "FillImageProperties"
            and isinstance(inputs, dict)
            and all(inputs.get(name) is None for name in _IMAGE_SOURCES)
        ):
            bad.append("specifications.inputs")
    return list(dict.fromkeys(bad))


def _invalid(paths: list[str]) -> ApiError:
    return _INVALID.error(
        [detail("InvalidProperty", f"Invalid '{path}' property.", path) for path in paths]
    )


def _made(name: str) -> Any:
    """What an asked-for output becomes in the answer: a new reality data id (a path in the
    bucket for a report, a location object for a modeling reference)."""
    if name == "modelingReference":
        return {"location": new_id()}
    if name == "report":
        return f"bkt:reports/{new_id()}.html"
    return new_id()


def _answered_outputs(outputs: Any) -> Any:
    """The create-time outputs with the reality data made for them (the facts' table)."""
    if isinstance(outputs, list):
        return {name: _made(name) for name in outputs}
    answered: dict[str, Any] = {}
    for key, value in outputs.items():
        if key == "exports" and isinstance(value, list):
            answered[key] = [{**export, "location": new_id()} for export in value]
        elif value is True:
            answered[key] = _made(key)
        elif value is not False and value is not None:
            answered[key] = value
    return answered


def _user_id(client_id: str) -> str:
    """A stable user id per client (made up: the identity service's subject would be)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"itwin-simulator:{client_id}"))


async def create_job(state: SimulatorState, request: Request, client_id: str) -> Response:
    body = await _INVALID.json_object(request)
    bad = _bad_fields(body)
    if bad:
        raise _invalid(bad)
    itwin_id = body["iTwinId"]
    if itwin_id == FORBIDDEN_ITWIN_ID:  # inferred, as the iTwins pages
        raise ApiError(403, INSUFFICIENT_PERMISSIONS)
    if itwin_id not in KNOWN_ITWIN_IDS:  # inferred from the bucket's 404
        raise ApiError(404, ITWIN_NOT_FOUND)
    config = state.config
    at = Instant.now()
    state.modeling_jobs_created += 1
    specifications = body["specifications"]
    job = ModelingJob(
        id=new_id(),
        name=body.get("name"),
        type=body["type"],
        itwin_id=itwin_id,
        user_id=_user_id(client_id),
        email=f"{client_id}@{EMAIL_DOMAIN}",
        specifications={
            **specifications,
            "outputs": _answered_outputs(specifications["outputs"]),
        },
        run=ModelingRun(at, config.job_duration_seconds * config.time_scale, config.job_outcome),
        sequence=state.modeling_jobs_created,
    )
    state.modeling_jobs[job.id] = job
    return JSONResponse({"job": job.to_json(at.clock)}, status_code=201)


def find_modeling_job(state: SimulatorState, job_id: str) -> ModelingJob:
    job = state.modeling_jobs.get(job_id)
    if job is None:
        raise ApiError(404, JOB_NOT_FOUND)
    return job


def _job(state: SimulatorState, request: Request) -> ModelingJob:
    return find_modeling_job(state, request.path_params["job_id"])


async def get_job(state: SimulatorState, request: Request, client_id: str) -> Response:
    return JSONResponse({"job": _job(state, request).to_json(time.monotonic())})


async def cancel_job(state: SimulatorState, request: Request, client_id: str) -> Response:
    """DELETE: 200 with the job TerminatingOnCancel (not 204); 422 once it is not running."""
    job = _job(state, request)
    at = Instant.now()
    if job.run.state(at.clock) not in RUNNING:
        raise ApiError(422, NOT_RUNNING)
    job.run.cancel(at)
    return JSONResponse({"job": job.to_json(at.clock)})


async def get_progress(state: SimulatorState, request: Request, client_id: str) -> Response:
    job, now = _job(state, request), time.monotonic()
    progress = {"percentage": job.run.percentage(now), "state": job.run.state(now)}
    return JSONResponse({"progress": progress})


async def get_messages(state: SimulatorState, request: Request, client_id: str) -> Response:
    job = _job(state, request)
    failed = job.run.state(time.monotonic()) == "Failed"
    return JSONResponse({"messages": {"errors": [JOB_FAILURE] if failed else [], "warnings": []}})


def _list_error(target: str, message: str) -> ApiError:
    # Inferred: the facts name a 400 for a bad filter; its words are the simulator's.
    return ApiError(400, INVALID_REQUEST, [detail("InvalidProperty", message, target)])


def _token(after: int, job_filter: str) -> str:
    """Opaque to clients: the last place of the page and the filter, so that a request with
    only the token goes on with the same filter (inferred), and jobs created between pages
    neither repeat nor skip the others."""
    document = json.dumps({"after": after, "filter": job_filter}, separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


def _place(token: str) -> tuple[int, str]:
    try:
        document = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, job_filter = document["after"], document["filter"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _list_error(TOKEN, "The continuation token is invalid.") from None
    if not isinstance(after, int) or not isinstance(job_filter, str):
        raise _list_error(TOKEN, "The continuation token is invalid.")
    return after, job_filter


def _top(value: str | None) -> int:
    if value is None:
        return DEFAULT_TOP
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_TOP:
        raise _list_error(TOP, f"$top is a whole number from 1 to {MAX_TOP}.")
    return int(value)


async def list_jobs(state: SimulatorState, request: Request, client_id: str) -> Response:
    """`$filter` (as `%24filter` too: the query is decoded first), `$top`, `continuationToken`;
    an empty token is none (Bentley's SDK always sends the parameter)."""
    query = request.query_params
    token = query.get(TOKEN) or None
    after, token_filter = _place(token) if token is not None else (0, None)
    job_filter = query.get(FILTER) or token_filter
    if job_filter is None:
        # Inferred: the SDK's changelog says the API wants a criterion.
        raise _list_error(FILTER, "A $filter is required.")
    try:
        conditions = parse_filter(job_filter)
    except FilterError as error:
        raise _list_error(FILTER, str(error)) from None
    top = _top(query.get(TOP))
    now = time.monotonic()
    matching = [
        job
        for job in state.modeling_jobs.values()
        if job.sequence > after and all(c.holds(job.fields(now)) for c in conditions)
    ]
    page = matching[:top]
    document: dict[str, Any] = {"jobs": [job.to_json(now) for job in page]}
    if len(matching) > top:
        following = request.url.replace_query_params(
            **{FILTER: job_filter, TOP: str(top), TOKEN: _token(page[-1].sequence, job_filter)}
        )
        document["_links"] = {"next": {"href": str(following)}}
    return JSONResponse(document)


async def get_bucket(state: SimulatorState, request: Request, client_id: str) -> Response:
    itwin_id = request.path_params["itwin_id"]
    if itwin_id == NO_CLUSTER_ITWIN_ID:
        raise ApiError(400, _NO_BUCKET, [_NO_DATA_CENTER])
    if itwin_id not in KNOWN_ITWIN_IDS | {FORBIDDEN_ITWIN_ID}:
        raise ApiError(404, ITWIN_NOT_FOUND)
    # Made up: a container URL of the shape a SAS URL has; nothing serves it.
    container = f"https://realitymodeling.blob.core.windows.net/{itwin_id}?sv=2025-01-05&sig=sim"
    return JSONResponse(
        {"bucket": {"iTwinId": itwin_id}, "_links": {"containerUrl": {"href": container}}}
    )


async def list_files(state: SimulatorState, request: Request, client_id: str) -> Response:
    return JSONResponse({"files": list(PRESET_FILES)})
