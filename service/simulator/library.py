"""Library: create an application in the organization."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import INSUFFICIENT_PERMISSIONS, ApiError, Detail, ErrorBody, detail
from .models import Application, new_id, timestamp
from .state import SimulatorState
from .validation import Unprocessable

MAX_NAME_LENGTH = 250
FORBIDDEN_SEQUENCES = (">", "<", "^", "$", "?", "||")
"""The page: a single `|` is allowed, only the pair is not."""

APPLICATION_EXISTS = ErrorBody(
    "ApplicationExists",
    "Application with the same name and version already exists within the organization.",
)
_CANNOT_CREATE_APPLICATION = Unprocessable(
    ErrorBody("InvalidCreateApplicationRequest", "Cannot create application."), "InvalidValue"
)
# (field, how the page's messages name it); both fields follow the same three rules.
_NAMED_FIELDS = (("displayName", "DisplayName"), ("version", "Version"))


def _application_details(body: dict[str, Any]) -> list[Detail]:
    details: list[Detail] = []
    for field, label in _NAMED_FIELDS:
        value = body.get(field)
        if not isinstance(value, str) or not value.strip():
            details.append(
                detail("MissingRequiredProperty", "Required property is missing.", field)
            )
            continue
        if len(value) > MAX_NAME_LENGTH:
            message = f"{label} is over '{MAX_NAME_LENGTH}' length limit."
            details.append(detail("InvalidValue", message, field))
        if any(sequence in value for sequence in FORBIDDEN_SEQUENCES):
            message = f"{label} must not include these special characters. >, <, ^, $, ?, ||."
            details.append(detail("InvalidValue", message, field))
    return details


async def create_application(state: SimulatorState, request: Request, client_id: str) -> Response:
    if state.config.library_forbidden:
        raise ApiError(403, INSUFFICIENT_PERMISSIONS)
    body = await _CANNOT_CREATE_APPLICATION.json_object(request)
    details = _application_details(body)
    if details:
        raise _CANNOT_CREATE_APPLICATION.error(details)
    key = (body["displayName"], body["version"])
    if key in state.applications:
        raise ApiError(409, APPLICATION_EXISTS)
    now = timestamp()
    application = Application(new_id(), key[0], key[1], now, now)
    state.applications[key] = application
    return JSONResponse({"application": application.to_json()}, status_code=201)
