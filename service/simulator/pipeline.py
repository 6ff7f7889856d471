"""What every API call goes through before its endpoint runs, in the platform's order.

1. Throttling (a 429 storm, then the own per-client limit): a throttled call is refused before
   its credentials are even looked at, as a gateway in front of the API would.
2. Injected faults: latency, hangs, random 500/503.
3. Authorization (a JWT of ours, verified on every call), then the Accept header: the pages list
   both under 401. Any Accept value is served, as the real API serves it: the pages only
   recommend the vnd media type. A request with no Accept header at all is refused, since the
   pages mark the header required.
4. The endpoint; then, for a request it processed (whatever it answered), the drop fault: the
   effect stays, the answer is never sent and the connection is closed.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import (
    HEADER_ACCEPT_NOT_FOUND,
    HEADER_AUTHORIZATION_NOT_FOUND,
    INTERNAL_SERVER_ERROR,
    INVALID_TOKEN,
    SERVICE_UNAVAILABLE,
    SHUTTING_DOWN,
    ApiError,
    ErrorBody,
)
from .state import SimulatorState

ACCEPT_MEDIA_TYPE = "application/vnd.bentley.itwin-platform.v1+json"
"""The Accept value the v1 pages recommend; other values get the same answer."""
ACCEPT_V2_MEDIA_TYPE = "application/vnd.bentley.itwin-platform.v2+json"
"""The Accept value the Reality Modeling v2 pages recommend (served like any other)."""
RATE_LIMIT_TIER = "Community"

Handler = Callable[[SimulatorState, Request, str], Awaitable[Response]]
"""An endpoint proper: gets the state, the request and the authenticated client id."""
Endpoint = Callable[[Request], Awaitable[Response]]

_INJECTED_ERRORS = {500: INTERNAL_SERVER_ERROR, 503: SERVICE_UNAVAILABLE}


class DroppedAnswer(Response):
    """No answer at all: sends nothing, so the request recorder has the connection closed."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


def api_endpoint(state: SimulatorState, handler: Handler, throttled: ErrorBody) -> Endpoint:
    """Wrap `handler` in the common pipeline; `throttled` is its page's 429 wording."""

    async def endpoint(request: Request) -> Response:
        try:
            _throttle(state, request, throttled)
            await _inject_faults(state, request)
            client_id = _authenticate(state, request)
            _check_accept(request)
        except ApiError as error:
            return error.response()
        try:
            response = await handler(state, request, client_id)
        except ApiError as error:
            response = error.response()
        if state.drop_answer(random.random()):
            return DroppedAnswer()
        return response

    return endpoint


def rate_limit_headers(retry_after: int) -> dict[str, str]:
    seconds = str(retry_after)
    return {
        "retry-after": seconds,
        "iTwinPlatform-RateLimit-Retry-After-Seconds": seconds,
        "iTwinPlatform-RateLimit-RemainingCalls": "0",
        "iTwinPlatform-Tier": RATE_LIMIT_TIER,
    }


def _bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _throttle(state: SimulatorState, request: Request, throttled: ErrorBody) -> None:
    now = time.monotonic()
    retry_after = state.storm_retry_after(now)
    if retry_after is None and state.limiter is not None:
        # The bucket is per client; calls with no valid token of ours share one anonymous bucket.
        token = _bearer_token(request.headers.get("authorization", ""))
        client_id = _client_of(state, request, token) if token else None
        wait = state.limiter.take(client_id or "", now)
        if wait > 0:
            retry_after = max(state.config.retry_after_seconds, math.ceil(wait))
    if retry_after is not None:
        raise ApiError(429, throttled, headers=rate_limit_headers(retry_after))


async def _inject_faults(state: SimulatorState, request: Request) -> None:
    """Apply latency, hangs and random errors."""
    config = state.config
    delay_ms = config.latency_ms + (random.uniform(0, config.jitter_ms) if config.jitter_ms else 0)
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    if config.hang_rate and random.random() < config.hang_rate:
        # Read the body now: once the client has given up it can no longer be read.
        await request.body()
        await _hang(state, config.hang_seconds)
    if config.error_rate and random.random() < config.error_rate:
        status = random.choice(config.error_statuses)
        raise ApiError(status, _INJECTED_ERRORS[status])


async def _hang(state: SimulatorState, seconds: float) -> None:
    """Sit on the request for `seconds`, then let it take effect even if the client has gone.

    That is what makes a lost answer dangerous: the effect happened, the client cannot know.
    Shutdown ends the hang with a 503: otherwise one hung request would hold the server open
    for up to `hang_seconds`.
    """
    closing = asyncio.ensure_future(state.closing.wait())
    try:
        await asyncio.wait_for(asyncio.shield(closing), seconds)
    except TimeoutError:
        return
    finally:
        closing.cancel()
    raise ApiError(503, SHUTTING_DOWN)


def _client_of(state: SimulatorState, request: Request, token: str) -> str | None:
    # As the real APIs take the identity service's tokens at another host, a token is good at
    # any address of this simulator; a configured issuer is checked exactly.
    return state.client_of(token, state.config.issuer)


def _authenticate(state: SimulatorState, request: Request) -> str:
    authorization = request.headers.get("authorization", "").strip()
    if not authorization:
        raise ApiError(401, HEADER_AUTHORIZATION_NOT_FOUND)
    token = _bearer_token(authorization)
    client_id = _client_of(state, request, token) if token else None
    if client_id is None:
        raise ApiError(401, INVALID_TOKEN)
    return client_id


def _check_accept(request: Request) -> None:
    if not request.headers.get("accept", "").strip():
        raise ApiError(401, HEADER_ACCEPT_NOT_FOUND)
