"""The iTwin Platform error object and the fixed error answers the API pages show.

Every API error leaves the simulator as `{"error": {"code", "message", "target"?, "details"?}}`;
handlers raise `ApiError` and the pipeline renders it, so no handler builds error JSON by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

Detail = dict[str, str]


def detail(code: str, message: str, target: str | None = None) -> Detail:
    """One entry of an error's `details`; `target` is left out, not null, when there is none."""
    entry = {"code": code, "message": message}
    if target is not None:
        entry["target"] = target
    return entry


@dataclass(frozen=True)
class ErrorBody:
    """The code and message of one error as a page words it."""

    code: str
    message: str


@dataclass(eq=False)
class ApiError(Exception):
    """An API answer other than success; raised anywhere below an endpoint, rendered once."""

    status: int
    body: ErrorBody
    details: list[Detail] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        error: dict[str, Any] = {"code": self.body.code, "message": self.body.message}
        if self.details:
            error["details"] = self.details
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


HEADER_AUTHORIZATION_NOT_FOUND = ErrorBody(
    "HeaderNotFound", "Header Authorization was not found in the request. Access denied."
)
INVALID_TOKEN = ErrorBody("InvalidToken", "The access token is invalid or has expired.")
HEADER_ACCEPT_NOT_FOUND = ErrorBody(
    "HeaderNotFound", "Header Accept was not found in the request. Access denied."
)
INSUFFICIENT_PERMISSIONS = ErrorBody(
    "InsufficientPermissions", "The user has insufficient permissions for the requested operation."
)
# The pages disagree on the 429 wording: the create pages use the first, GET workspace the second.
TOO_MANY_REQUESTS = ErrorBody(
    "TooManyRequests", "More requests were received than the subscription rate-limit allows."
)
RATE_LIMIT_EXCEEDED = ErrorBody(
    "RateLimitExceeded",
    "The client sent more requests than allowed by this API for the current tier of the client.",
)
INTERNAL_SERVER_ERROR = ErrorBody(
    "InternalServerError", "The server encountered an internal error."
)
SERVICE_UNAVAILABLE = ErrorBody("ServiceUnavailable", "The service is temporarily unavailable.")
SHUTTING_DOWN = ErrorBody("ServiceUnavailable", "The simulator is shutting down.")
RESOURCE_NOT_FOUND = ErrorBody("ResourceNotFound", "The requested resource was not found.")
METHOD_NOT_ALLOWED = ErrorBody(
    "MethodNotAllowed", "The HTTP method is not allowed for the requested resource."
)
