"""`/_simulator/*`: the control surface tests and benchmarks use from another process.

Not rate limited, not faulted, not logged and not authenticated: it is the test's back door,
never part of the simulated API.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import get_args

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .contextcapture import find_job
from .errors import ApiError, ErrorBody, detail
from .lifecycle import JobOutcome
from .pipeline import Endpoint
from .requestlog import RequestKind
from .state import SimulatorState
from .validation import Unprocessable

ADMIN_PREFIX = "/_simulator"

_INVALID = Unprocessable(
    ErrorBody("InvalidSimulatorRequest", "The simulator cannot apply this request."),
    "InvalidValue",
)
_KINDS = frozenset(get_args(RequestKind))
OUTCOME_SETTLED = ErrorBody("JobNotModifiable", "The job is over: its outcome cannot change.")

AdminHandler = Callable[[SimulatorState, Request], Awaitable[Response]]


class StormRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: PositiveFloat
    retry_after: PositiveInt | None = None


class DropRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: PositiveInt


class OutcomeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: JobOutcome


def _validation_error(error: ValidationError) -> ApiError:
    # Only the message and location: pydantic's `input` could echo a client secret.
    return _INVALID.error(
        [
            detail("InvalidValue", item["msg"], ".".join(str(part) for part in item["loc"]))
            for item in error.errors()
        ]
    )


async def _requests(state: SimulatorState, request: Request) -> Response:
    kind = request.query_params.get("kind")
    if kind is not None and kind not in _KINDS:
        raise _INVALID.error(
            [detail("InvalidValue", f"kind must be one of {sorted(_KINDS)}", "kind")]
        )
    return JSONResponse({"requests": state.log.to_json(kind)})


async def _clear_requests(state: SimulatorState, request: Request) -> Response:
    state.log.clear()
    return Response(status_code=204)


async def _config(state: SimulatorState, request: Request) -> Response:
    return JSONResponse(state.config.public())


async def _patch_config(state: SimulatorState, request: Request) -> Response:
    changes = await _INVALID.json_object(request)
    try:
        state.set_config(state.config.updated(changes))
    except ValidationError as error:
        raise _validation_error(error) from None
    return JSONResponse(state.config.public())


async def _storm(state: SimulatorState, request: Request) -> Response:
    try:
        storm = StormRequest.model_validate(await _INVALID.json_object(request))
    except ValidationError as error:
        raise _validation_error(error) from None
    entry = state.start_storm(storm.seconds, storm.retry_after)
    return JSONResponse({"storm": entry.to_json()})


async def _drop_next(state: SimulatorState, request: Request) -> Response:
    """Drop the answers of the next `count` API calls the endpoints process (then as before)."""
    try:
        drop = DropRequest.model_validate(await _INVALID.json_object(request))
    except ValidationError as error:
        raise _validation_error(error) from None
    state.drops_pending = drop.count
    return JSONResponse({"dropsPending": state.drops_pending})


async def _job_outcome(state: SimulatorState, request: Request) -> Response:
    """Decide how one job ends (ContextCapture or v2), whatever the config says, as long as it
    is not over yet."""
    try:
        wanted = OutcomeRequest.model_validate(await _INVALID.json_object(request))
    except ValidationError as error:
        raise _validation_error(error) from None
    job_id, now = request.path_params["job_id"], time.monotonic()
    modeling_job = state.modeling_jobs.get(job_id)
    if modeling_job is not None:
        if modeling_job.run.is_over(now):
            raise ApiError(409, OUTCOME_SETTLED)
        modeling_job.run.outcome = wanted.outcome
        return JSONResponse({"job": modeling_job.to_json(now)})
    job = find_job(state, job_id)
    if job.lifecycle.is_over(now):
        raise ApiError(409, OUTCOME_SETTLED)
    job.lifecycle.outcome = wanted.outcome
    return JSONResponse({"job": job.to_json(now)})


async def _expire_tokens(state: SimulatorState, request: Request) -> Response:
    return JSONResponse({"expired": state.expire_tokens()})


async def _reset(state: SimulatorState, request: Request) -> Response:
    state.reset()
    return Response(status_code=204)


def _admin_endpoint(state: SimulatorState, handler: AdminHandler) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(state, request)
        except ApiError as error:
            return error.response()

    return endpoint


def admin_routes(state: SimulatorState) -> list[Route]:
    table: tuple[tuple[str, str, AdminHandler], ...] = (
        ("/requests", "GET", _requests),
        ("/requests", "DELETE", _clear_requests),
        ("/config", "GET", _config),
        ("/config", "PATCH", _patch_config),
        ("/storm", "POST", _storm),
        ("/drop-next", "POST", _drop_next),
        ("/jobs/{job_id}/outcome", "POST", _job_outcome),
        ("/expire-tokens", "POST", _expire_tokens),
        ("/reset", "POST", _reset),
    )
    return [
        Route(ADMIN_PREFIX + path, _admin_endpoint(state, handler), methods=[method])
        for path, method, handler in table
    ]
