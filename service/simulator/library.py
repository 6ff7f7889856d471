"""Library: create, list (in pages), get, replace and delete the organization's applications."""

from __future__ import annotations

import base64
import binascii
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
APPLICATION_NOT_FOUND = ErrorBody("ApplicationNotFound", "Requested Application is not available.")
# Inferred: the PUT's 422 wording, and the answer to a continuation token it never gave out.
_CANNOT_UPDATE_APPLICATION = Unprocessable(
    ErrorBody("InvalidUpdateApplicationRequest", "Cannot update application."), "InvalidValue"
)
_CANNOT_LIST = ErrorBody("InvalidApplicationsRequest", "Cannot list applications.")
_BAD_TOKEN = detail("InvalidValue", "The continuation token is invalid.", "continuationToken")
PAGE_SIZE = 50
_PLACE_PREFIX = "after:"
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
    if key in state.application_names:
        raise ApiError(409, APPLICATION_EXISTS)
    now = timestamp()
    state.applications_created += 1
    application = Application(new_id(), key[0], key[1], now, now, state.applications_created)
    state.applications[application.id] = application
    state.application_names[key] = application.id
    return JSONResponse({"application": application.to_json()}, status_code=201)


def _token(after: int) -> str:
    """Opaque to clients; here the place of the page's last application, so applications
    created or deleted between pages neither repeat nor skip the others."""
    return base64.urlsafe_b64encode(f"{_PLACE_PREFIX}{after}".encode()).decode().rstrip("=")


def _after(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    number = text.removeprefix(_PLACE_PREFIX)
    if not text.startswith(_PLACE_PREFIX) or not number.isascii() or not number.isdigit():
        raise ApiError(422, _CANNOT_LIST, [_BAD_TOKEN])
    return int(number)


async def list_applications(state: SimulatorState, request: Request, client_id: str) -> Response:
    """50 a page in creation order; `_links.next.href` to follow, absent on the last page."""
    token = request.query_params.get("continuationToken")
    after = _after(token) if token is not None else 0
    remaining = [app for app in state.applications.values() if app.sequence > after]
    page = remaining[:PAGE_SIZE]
    document: dict[str, Any] = {"applications": [app.to_json() for app in page]}
    links: dict[str, Any] = {"self": {"href": str(request.url)}}
    if len(remaining) > PAGE_SIZE:
        following = request.url.include_query_params(continuationToken=_token(page[-1].sequence))
        links["next"] = {"href": str(following)}
    document["_links"] = links
    return JSONResponse(document)


def _find(state: SimulatorState, request: Request) -> Application:
    application = state.applications.get(request.path_params["application_id"])
    if application is None:
        raise ApiError(404, APPLICATION_NOT_FOUND)
    return application


async def get_application(state: SimulatorState, request: Request, client_id: str) -> Response:
    return JSONResponse({"application": _find(state, request).to_json()})


async def update_application(state: SimulatorState, request: Request, client_id: str) -> Response:
    """A whole replacement under the creation's rules; another application's name and version
    is a 409 (inferred from the POST), its own is not."""
    if state.config.library_forbidden:
        raise ApiError(403, INSUFFICIENT_PERMISSIONS)
    application = _find(state, request)
    body = await _CANNOT_UPDATE_APPLICATION.json_object(request)
    details = _application_details(body)
    if details:
        raise _CANNOT_UPDATE_APPLICATION.error(details)
    key = (body["displayName"], body["version"])
    if state.application_names.get(key, application.id) != application.id:
        raise ApiError(409, APPLICATION_EXISTS)
    del state.application_names[(application.display_name, application.version)]
    state.application_names[key] = application.id
    application.display_name, application.version = key
    application.last_modified = timestamp()
    return JSONResponse({"application": application.to_json()})


async def delete_application(state: SimulatorState, request: Request, client_id: str) -> Response:
    if state.config.library_forbidden:
        raise ApiError(403, INSUFFICIENT_PERMISSIONS)
    application = _find(state, request)
    del state.applications[application.id]
    del state.application_names[(application.display_name, application.version)]
    return Response(status_code=204)
