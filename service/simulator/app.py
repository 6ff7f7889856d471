"""The ASGI application: the API endpoints, the token endpoint, OIDC discovery and the JWKS, and
the admin endpoints."""

from __future__ import annotations

import hashlib
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import contextcapture, itwins, library, modeling
from .admin import ADMIN_PREFIX, admin_routes
from .errors import (
    METHOD_NOT_ALLOWED,
    RATE_LIMIT_EXCEEDED,
    RESOURCE_NOT_FOUND,
    TOO_MANY_REQUESTS,
    ApiError,
    ErrorBody,
)
from .oauth import TOKEN_PATH, token_endpoint
from .oidc import (
    AUTHORIZE_PATH,
    DISCOVERY_PATH,
    JWKS_PATH,
    OIDC_PATHS,
    authorize_endpoint,
    discovery_endpoint,
    jwks_endpoint,
)
from .pipeline import Endpoint, Handler, api_endpoint
from .requestlog import ACCEPT_LOGGED, RequestKind
from .state import SimulatorState

# (method, path, endpoint, the wording of its page's 429)
API_ROUTES: tuple[tuple[str, str, Handler, ErrorBody], ...] = (
    ("POST", "/contextcapture/workspaces", contextcapture.create_workspace, TOO_MANY_REQUESTS),
    (
        "GET",
        "/contextcapture/workspaces/{workspace_id}",
        contextcapture.get_workspace,
        RATE_LIMIT_EXCEEDED,
    ),
    ("POST", "/contextcapture/jobs", contextcapture.create_job, TOO_MANY_REQUESTS),
    ("GET", "/contextcapture/jobs/{job_id}", contextcapture.get_job, RATE_LIMIT_EXCEEDED),
    ("PATCH", "/contextcapture/jobs/{job_id}", contextcapture.update_job, TOO_MANY_REQUESTS),
    (
        "GET",
        "/contextcapture/jobs/{job_id}/progress",
        contextcapture.get_job_progress,
        RATE_LIMIT_EXCEEDED,
    ),
    ("POST", "/itwins/{itwin_id}/repositories", itwins.create_repository, TOO_MANY_REQUESTS),
    ("POST", "/library/applications", library.create_application, TOO_MANY_REQUESTS),
    # The rest of each resource's lifecycle (shared/design/api-beyond.md).
    (
        "DELETE",
        "/contextcapture/workspaces/{workspace_id}",
        contextcapture.delete_workspace,
        TOO_MANY_REQUESTS,
    ),
    ("DELETE", "/contextcapture/jobs/{job_id}", contextcapture.delete_job, TOO_MANY_REQUESTS),
    (
        "GET",
        "/contextcapture/limits/engines",
        contextcapture.get_engine_limit,
        RATE_LIMIT_EXCEEDED,
    ),
    ("GET", "/itwins/{itwin_id}/repositories", itwins.list_repositories, RATE_LIMIT_EXCEEDED),
    (
        "GET",
        "/itwins/{itwin_id}/repositories/{repository_id}",
        itwins.get_repository,
        RATE_LIMIT_EXCEEDED,
    ),
    (
        "PATCH",
        "/itwins/{itwin_id}/repositories/{repository_id}",
        itwins.update_repository,
        TOO_MANY_REQUESTS,
    ),
    (
        "DELETE",
        "/itwins/{itwin_id}/repositories/{repository_id}",
        itwins.delete_repository,
        TOO_MANY_REQUESTS,
    ),
    ("GET", "/library/applications", library.list_applications, RATE_LIMIT_EXCEEDED),
    (
        "GET",
        "/library/applications/{application_id}",
        library.get_application,
        RATE_LIMIT_EXCEEDED,
    ),
    (
        "PUT",
        "/library/applications/{application_id}",
        library.update_application,
        TOO_MANY_REQUESTS,
    ),
    (
        "DELETE",
        "/library/applications/{application_id}",
        library.delete_application,
        TOO_MANY_REQUESTS,
    ),
    # Reality Modeling v2: the eight operations (shared/design/api-beyond.md); one 429 wording.
    ("POST", "/reality-modeling/jobs", modeling.create_job, RATE_LIMIT_EXCEEDED),
    ("GET", "/reality-modeling/jobs", modeling.list_jobs, RATE_LIMIT_EXCEEDED),
    ("GET", "/reality-modeling/jobs/{job_id}", modeling.get_job, RATE_LIMIT_EXCEEDED),
    ("DELETE", "/reality-modeling/jobs/{job_id}", modeling.cancel_job, RATE_LIMIT_EXCEEDED),
    ("GET", "/reality-modeling/jobs/{job_id}/progress", modeling.get_progress, RATE_LIMIT_EXCEEDED),
    ("GET", "/reality-modeling/jobs/{job_id}/messages", modeling.get_messages, RATE_LIMIT_EXCEEDED),
    ("GET", "/reality-modeling/itwins/{itwin_id}/bucket", modeling.get_bucket, RATE_LIMIT_EXCEEDED),
    ("GET", "/reality-modeling/files", modeling.list_files, RATE_LIMIT_EXCEEDED),
)

_ROUTING_ERRORS = {404: RESOURCE_NOT_FOUND, 405: METHOD_NOT_ALLOWED}


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in the API's error shape, not Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    body = _ROUTING_ERRORS.get(exc.status_code) or ErrorBody(
        HTTPStatus(exc.status_code).phrase.replace(" ", ""), exc.detail
    )
    return ApiError(exc.status_code, body, headers=dict(exc.headers or {})).response()


def _kind(path: str) -> RequestKind:
    if path == TOKEN_PATH:
        return "token"
    return "oidc" if path in OIDC_PATHS else "api"


DROPPED = "the simulator dropped this answer (drop fault): connection closed"
"""What the application hands uvicorn instead of an answer. uvicorn (both its HTTP
implementations) closes the connection, writing nothing, when an ASGI application returns a
value: the one way ASGI has to end a connection without a byte of answer. uvicorn logs it."""


class RequestRecorder:
    """Logs every API, token and OIDC request at arrival and its status once it is answered.

    It wraps the whole application, so even unknown paths and unhandled errors are logged. A
    request the application did not answer (Starlette answers everything else, errors included)
    had its answer dropped: its status stays null and the connection is closed.

    The body is read on arrival, as a real server has it once the request is received: a client
    that goes away while the request waits (injected latency) does not take it back, the
    request takes effect all the same. Its digest is logged.
    """

    def __init__(self, app: ASGIApp, state: SimulatorState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(ADMIN_PREFIX):
            await self._app(scope, receive, send)
            return None
        headers = dict(scope["headers"])
        traceparent, accept = headers.get(b"traceparent"), headers.get(b"accept")
        entry = self._state.log.record(
            scope["method"],
            path,
            _kind(path),
            traceparent.decode("latin-1")[:64] if traceparent is not None else None,
            accept.decode("latin-1")[:ACCEPT_LOGGED] if accept is not None else None,
        )
        body, ended = await _whole_body(receive)
        if body:
            entry.body_digest = hashlib.sha256(body).hexdigest()[:16]
        given = False

        async def receive_given() -> Message:
            nonlocal given
            if given or not ended:
                return await receive()
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        answered = False

        async def send_recording(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                entry.status = message["status"]
            await send(message)

        await self._app(scope, receive_given, send_recording)
        return None if answered else DROPPED


async def _whole_body(receive: Receive) -> tuple[bytes, bool]:
    """The request's body, and whether it all arrived (False: the client left first)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _by_method(endpoints: dict[str, Endpoint]) -> Endpoint:
    """One endpoint for a path several methods share, so a 405 there lists them all."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return endpoint


def _api_routes(state: SimulatorState) -> list[Route]:
    by_path: dict[str, dict[str, Endpoint]] = {}
    for method, path, handler, throttled in API_ROUTES:
        by_path.setdefault(path, {})[method] = api_endpoint(state, handler, throttled)
    return [
        Route(path, _by_method(endpoints), methods=list(endpoints))
        for path, endpoints in by_path.items()
    ]


def build_app(state: SimulatorState) -> ASGIApp:
    routes = _api_routes(state)
    routes.append(Route(TOKEN_PATH, token_endpoint(state), methods=["POST"]))
    routes.append(Route(DISCOVERY_PATH, discovery_endpoint(state), methods=["GET"]))
    routes.append(Route(JWKS_PATH, jwks_endpoint(state), methods=["GET"]))
    # OpenID Connect Core §3.1.2.1: the authorization endpoint takes GET and POST.
    routes.append(Route(AUTHORIZE_PATH, authorize_endpoint, methods=["GET", "POST"]))
    routes.extend(admin_routes(state))
    app = Starlette(routes=routes, exception_handlers={HTTPException: _routing_error})
    # Paths are matched exactly, as the API does: no redirect from a trailing slash.
    app.router.redirect_slashes = False
    return RequestRecorder(app, state)
