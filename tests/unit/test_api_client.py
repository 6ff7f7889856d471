"""The API client's decisions on httpx's `MockTransport`: classification, retries, the one
token refresh after a 401, the shared pause after a 429, the token taken after the wait, answers
larger than MAX_RESPONSE_BYTES."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import httpx
import pytest
from pydantic import SecretStr

from service.api import ApiClient, RetryPolicy
from service.auth import ClientCredentials, TokenProvider
from service.commands import ApiRequest
from service.errors import (
    ApiError,
    OutcomeUnknown,
    ResponseTooLarge,
    RetriesExhausted,
    Unauthorized,
)
from service.limiter import LocalLimiter, Priority, buckets_for
from service.limits import MAX_TOKEN_ANSWER_BYTES
from service.metrics import Metrics

POST = ApiRequest("POST", "/contextcapture/workspaces", {"name": "w"}, "workspaces")
GET = ApiRequest("GET", "/contextcapture/workspaces/w1", None, "workspace")
CREATED = {"workspace": {"id": "w1", "name": "w"}}
Handler = Callable[[httpx.Request], httpx.Response]


class Clock:
    """Time that moves only when the limiter sleeps: waits are exact and instant."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Identity:
    """A token endpoint handing out numbered tokens, counting fetches."""

    def __init__(self, lifetime: float = 3600.0) -> None:
        self.issued = 0
        self.lifetime = lifetime

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.issued += 1
        return httpx.Response(
            200, json={"access_token": f"token-{self.issued}", "expires_in": self.lifetime}
        )


def client(
    api: Handler,
    identity: Identity | None = None,
    clock: Clock | None = None,
    *,
    max_response_bytes: int = 8 * 1024 * 1024,
    timeout: float = 5.0,
) -> ApiClient:
    clock = clock or Clock()
    identity = identity or Identity()
    tokens = TokenProvider(
        httpx.AsyncClient(transport=httpx.MockTransport(identity)),
        ClientCredentials("https://ims.example/token", "id", SecretStr("secret"), "scope"),
        clock=clock,
    )
    return ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(api), timeout=timeout),
        tokens,
        LocalLimiter(buckets_for(10.0, 1), clock=clock, sleep=clock.sleep),
        RetryPolicy(attempts=3, initial=0.0001, maximum=0.0001, rate_limit_budget=30.0),
        base_url="https://api.example",
        metrics=Metrics(frozenset()),
        max_response_bytes=max_response_bytes,
    )


def answers(*responses: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return handle, seen


def error(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": f"{code}!"}}, headers=headers
    )


async def test_a_success_returns_the_document_with_the_worker_headers() -> None:
    handle, seen = answers(httpx.Response(201, json=CREATED))
    response = await client(handle).send(POST)
    assert (response.status, response.document, response.attempts) == (201, CREATED, 1)
    [request] = seen
    assert request.url == "https://api.example/contextcapture/workspaces"
    assert request.headers["authorization"] == "Bearer token-1"
    assert request.headers["accept"] == "application/vnd.bentley.itwin-platform.v1+json"
    assert request.content == b'{"name":"w"}'


async def test_a_clean_refusal_is_the_apis_error_not_retried() -> None:
    handle, seen = answers(error(422, "InvalidContextCaptureRequest"))
    with pytest.raises(ApiError) as raised:
        await client(handle).send(POST)
    assert (raised.value.status, raised.value.code, raised.value.dead_letter) == (
        422, "InvalidContextCaptureRequest", False,
    )  # fmt: skip
    assert len(seen) == 1


async def test_a_503_is_retried_until_the_attempts_are_spent() -> None:
    handle, seen = answers(*[error(503, "ServiceUnavailable")] * 3)
    with pytest.raises(RetriesExhausted) as raised:
        await client(handle).send(POST)
    assert len(seen) == 3
    assert (raised.value.attempts, raised.value.status) == (3, 503)


async def test_a_500_is_retried_on_a_get_but_not_on_a_post() -> None:
    handle, seen = answers(error(500, "Boom"), httpx.Response(200, json=CREATED))
    assert (await client(handle).send(GET)).attempts == 2
    handle, seen = answers(error(500, "Boom"))
    with pytest.raises(ApiError) as raised:
        await client(handle).send(POST)
    assert raised.value.dead_letter
    assert len(seen) == 1


async def test_a_401_refreshes_the_token_once_then_gives_up() -> None:
    identity = Identity()
    handle, seen = answers(error(401, "InvalidToken"), httpx.Response(201, json=CREATED))
    assert (await client(handle, identity).send(POST)).attempts == 2
    assert [r.headers["authorization"] for r in seen] == ["Bearer token-1", "Bearer token-2"]

    handle, seen = answers(error(401, "InvalidToken"), error(401, "InvalidToken"))
    with pytest.raises(ApiError) as raised:
        await client(handle, Identity()).send(POST)
    assert (raised.value.status, raised.value.dead_letter) == (401, True)


async def test_a_429_pauses_the_limiter_for_retry_after_then_retries() -> None:
    clock = Clock()
    handle, seen = answers(error(429, "TooManyRequests", **{"retry-after": "7"}),
                           httpx.Response(201, json=CREATED))  # fmt: skip
    started = clock.now
    assert (await client(handle, clock=clock).send(POST)).attempts == 2
    assert clock.now - started >= 7.0, "the retry waited out the pause"
    assert len(seen) == 2


async def test_429s_beyond_the_wait_budget_end_the_command() -> None:
    handle, seen = answers(*[error(429, "RateLimitExceeded", **{"retry-after": "20"})] * 3)
    with pytest.raises(RetriesExhausted) as raised:
        await client(handle).send(POST)
    assert len(seen) == 2, "20 s + 20 s of pauses passes the 30 s budget"
    assert "rate limited" in raised.value.message


async def test_the_token_is_taken_after_the_limiter_wait() -> None:
    """40 calls at once, 0.1 s tokens, slots 5 ms apart (real time): the last waits ~0.2 s for
    its slot. A token taken before that wait would have expired at the API; taken after it,
    none has."""
    identity = Identity(lifetime=0.1)
    issued_at: dict[str, float] = {}
    refused: list[str] = []

    def issue(request: httpx.Request) -> httpx.Response:
        response = identity(request)
        issued_at[f"token-{identity.issued}"] = time.monotonic()
        return response

    def api(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        if time.monotonic() - issued_at[token] >= identity.lifetime:
            refused.append(token)
            return error(401, "InvalidToken")
        return httpx.Response(201, json=CREATED)

    tokens = TokenProvider(
        httpx.AsyncClient(transport=httpx.MockTransport(issue)),
        ClientCredentials("https://ims.example/token", "id", SecretStr("secret"), "scope"),
    )
    sender = ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(api)),
        tokens,
        LocalLimiter(buckets_for(200.0, 1)),
        RetryPolicy(),
        base_url="https://api.example",
        metrics=Metrics(frozenset()),
    )
    results = await asyncio.gather(*(sender.send(POST) for _ in range(40)))
    assert refused == []
    assert all(result.attempts == 1 for result in results)
    assert identity.issued >= 2, "the backlog outlived a token"


async def test_a_lost_answer_of_a_post_is_outcome_unknown() -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    with pytest.raises(OutcomeUnknown):
        await client(drop).send(POST)


async def test_no_token_means_no_call() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    handle, seen = answers()
    api = ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handle)),
        TokenProvider(
            httpx.AsyncClient(transport=httpx.MockTransport(down)),
            ClientCredentials("https://ims.example/token", "id", SecretStr("secret"), "scope"),
        ),
        LocalLimiter(buckets_for(10.0, 1)),
        RetryPolicy(),
        base_url="https://api.example",
        metrics=Metrics(frozenset()),
    )
    with pytest.raises(Unauthorized):
        await api.send(POST)
    assert seen == []


class RecordingLimiter(LocalLimiter):
    """The local limiter, noting the class of every slot asked for."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(buckets_for(10.0, 1), clock=clock, sleep=clock.sleep)
        self.asked: list[Priority] = []

    async def acquire(self, priority: Priority = "command") -> float:
        self.asked.append(priority)
        return await super().acquire(priority)


@pytest.mark.parametrize("priority", ["command", "poll"])
async def test_every_attempt_keeps_the_requests_class(priority: Priority) -> None:
    clock = Clock()
    limiter = RecordingLimiter(clock)
    metrics = Metrics(frozenset())
    handle, seen = answers(error(503, "Busy"), error(503, "Busy"), httpx.Response(200, json={}))
    api = ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handle)),
        TokenProvider(
            httpx.AsyncClient(transport=httpx.MockTransport(Identity())),
            ClientCredentials("https://ims.example/token", "id", SecretStr("secret"), "scope"),
            clock=clock,
        ),
        limiter,
        RetryPolicy(attempts=3, initial=0.0001, maximum=0.0001),
        base_url="https://api.example",
        metrics=metrics,
    )
    await api.send(replace(GET, priority=priority))
    assert len(seen) == 3
    assert limiter.asked == [priority] * 3
    used = metrics.registry.get_sample_value
    assert used("itwin_worker_budget_used_total", {"class": priority}) == 3
    other = "poll" if priority == "command" else "command"
    assert used("itwin_worker_budget_used_total", {"class": other}) == 0
    assert used("itwin_worker_limiter_waiting", {"class": priority}) == 0


class Body(httpx.AsyncByteStream):
    """A streamed body of `chunks` chunks of `size` bytes (None: endless), `pause` seconds
    apart; it counts what was read of it."""

    def __init__(self, size: int, chunks: int | None = None, pause: float = 0.0) -> None:
        self.size, self.chunks, self.pause = size, chunks, pause
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while self.chunks is None or sent < self.chunks:
            if self.pause:
                await asyncio.sleep(self.pause)
            self.read += self.size
            sent += 1
            yield b"x" * self.size


async def test_a_declared_length_over_the_bound_is_not_read() -> None:
    body = Body(1000, chunks=2000)
    handle, seen = answers(httpx.Response(201, headers={"content-length": "2000000"}, stream=body))
    with pytest.raises(OutcomeUnknown) as raised:
        await client(handle, max_response_bytes=1_000_000).send(POST)
    assert body.read == 0
    assert len(seen) == 1
    assert (raised.value.status, raised.value.attempts) == (201, 1)
    assert "MAX_RESPONSE_BYTES (1000000 bytes)" in raised.value.message
    assert "not sent again" in raised.value.message


async def test_an_endless_answer_is_read_up_to_the_bound_only() -> None:
    body = Body(1000)
    handle, seen = answers(httpx.Response(200, stream=body))
    with pytest.raises(ResponseTooLarge) as raised:
        await client(handle, max_response_bytes=100_000).send(GET)
    assert 100_000 < body.read <= 101_000
    assert len(seen) == 1, "a GET whose answer is too large is not repeated: it would be again"
    assert (raised.value.status, raised.value.dead_letter, raised.value.retriable) == (
        200, True, False,
    )  # fmt: skip


async def test_an_error_answer_too_large_is_judged_by_its_status() -> None:
    handle, seen = answers(
        httpx.Response(502, stream=Body(1000, chunks=500)), httpx.Response(200, json=CREATED)
    )
    response = await client(handle, max_response_bytes=100_000).send(GET)
    assert (response.status, response.attempts, len(seen)) == (200, 2, 2)


async def test_an_answer_at_the_bound_is_read() -> None:
    handle, _ = answers(httpx.Response(200, json=CREATED))
    size = len(httpx.Response(200, json=CREATED).content)
    response = await client(handle, max_response_bytes=size).send(GET)
    assert response.document == CREATED


async def test_json_nested_deeper_than_json_follows_is_no_json_object() -> None:
    handle, _ = answers(httpx.Response(201, content=b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(ApiError) as raised:
        await client(handle).send(POST)
    assert (raised.value.code, raised.value.status) == ("UnexpectedResponse", 201)


async def test_a_body_trickling_in_past_the_read_timeout_is_a_lost_answer() -> None:
    body = Body(1, pause=0.02)
    handle, seen = answers(httpx.Response(201, stream=body))
    with pytest.raises(OutcomeUnknown) as raised:
        await client(handle, timeout=0.3).send(POST)
    assert len(seen) == 1
    assert "ReadTimeout" in raised.value.message


async def test_a_token_answer_larger_than_its_bound_is_no_token() -> None:
    body = Body(1000)

    def identity(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=body)

    tokens = TokenProvider(
        httpx.AsyncClient(transport=httpx.MockTransport(identity)),
        ClientCredentials("https://ims.example/token", "id", SecretStr("secret"), "scope"),
    )
    with pytest.raises(Unauthorized, match="without a usable access_token"):
        await tokens.token()
    assert body.read <= MAX_TOKEN_ANSWER_BYTES + 1000
