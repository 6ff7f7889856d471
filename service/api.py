"""The iTwin Platform client: limiter, token, send, classify, retry — for every call.

Every attempt takes a limiter slot first, so the budget counts retries too, and only then the
access token: a slot may be far ahead when a backlog waits, and a token taken before the wait
could expire during it. 429s wait on the
shared limiter (which the 429 paused) within a total wait budget, a 401 refreshes the token
once, and failures that prove the request was not processed back off exponentially with full
jitter for a bounded number of attempts. The retry loop is a few lines of our own: tenacity's
machinery measured ~36 µs of CPU per command, about 2 % of the worker's budget.

A lost answer (the request went out, no answer came back) is repeated only for a request that is
safe to repeat (GET, PUT, DELETE, and the PATCHes that only set fields): a POST, or a PATCH that
changes a job's state, ends as `OutcomeUnknown` instead of risking a duplicate. A DELETE repeated
after a lost answer that now gets 404 was deleted by the lost attempt: that is its success (the
event's `attempts` shows the repeat). A 404 on a DELETE's first attempt stays the API's refusal.

The circuit breaker (`service.breaker`) sees every send: connect errors, timeouts and 5xx count
against it, any other answer proves the API up. While it is open a call raises `DependencyDown`
instead of being sent or retried, and so does a call that needs Redis (limiter, breaker) while
Redis does not answer: the pipeline then waits with the command, which spends none of its tries.

An answer is read only up to MAX_RESPONSE_BYTES (`service.http_client.read_answer`). A larger
one is judged by its status alone: an error status as if its body were empty, a success as
`ResponseTooLarge`, or `OutcomeUnknown` for a request that is not safe to repeat (it took
effect, its result was not read, and it must not be sent again).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from service.auth import TokenProvider
from service.breaker import Breaker, Permit
from service.commands import ApiRequest
from service.errors import (
    ApiError,
    OutcomeUnknown,
    RateLimited,
    ResponseTooLarge,
    RetriesExhausted,
    TokenRejected,
    TransientError,
    WorkerError,
    classify_failure,
)
from service.http_client import TRANSPORT_ERRORS, Answer, never_sent, read_answer
from service.limiter import Limiter
from service.limits import Limits
from service.metrics import Metrics
from service.outages import REDIS, REDIS_UNAVAILABLE, DependencyDown
from service.tracing import Tracing, http_attributes

BeforeSending = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    """Attempts for failures that prove the request was not processed."""
    initial: float = 0.5
    maximum: float = 10.0
    rate_limit_budget: float = 300.0
    """Total seconds of 429 pauses one command may sit through."""
    default_retry_after: float = 5.0


@dataclass(frozen=True)
class ApiResponse:
    status: int
    document: dict[str, Any]
    attempts: int


def backoff(
    failures: int,
    policy: RetryPolicy,
    draw: Callable[[float, float], float] = random.uniform,
) -> float:
    """Full jitter: uniform in [0, min(maximum, initial · 2^(failures - 1))]."""
    ceiling = min(policy.maximum, policy.initial * 2.0 ** min(failures - 1, 62))
    return draw(0.0, ceiling)


class _Tries:
    """One command's retry budget: whether to stop after a failure, and how long to wait."""

    def __init__(self, policy: RetryPolicy, metrics: Metrics) -> None:
        self.policy = policy
        self._metrics = metrics
        self.sent = 0
        self.failures = 0
        self.rate_limited_for = 0.0
        self.refreshed = False
        self.answer_lost = False
        """An earlier attempt went out and its answer never came: it may have taken effect."""

    def stop(self, error: TransientError) -> bool:
        if isinstance(error, RateLimited):
            self.rate_limited_for += error.retry_after
            stop = self.rate_limited_for > self.policy.rate_limit_budget
            reason = "rate_limited"
        elif isinstance(error, TokenRejected):
            stop, reason = False, "token_refresh"
        else:
            self.failures += 1
            stop, reason = self.failures >= self.policy.attempts, "transient"
        if not stop:
            self._metrics.retries.labels(reason).inc()
        return stop

    def wait(self, error: TransientError) -> float:
        # The limiter already holds everyone for a 429; a refreshed token needs no wait.
        if isinstance(error, RateLimited | TokenRejected):
            return 0.0
        return backoff(self.failures, self.policy)

    def exhausted(self, last: TransientError) -> RetriesExhausted:
        if isinstance(last, RateLimited):
            message = (
                f"Still rate limited after {self.rate_limited_for:.0f} s of pauses "
                f"({last.message})."
            )
        else:
            message = f"Gave up after {self.failures} attempts: {last.code}: {last.message}"
        return RetriesExhausted(message, status=last.status)


class ApiClient:
    """Sends `ApiRequest`s; returns the API's document or raises a `WorkerError`.

    Requests go through one `httpx.AsyncClient` (see `service.http_client`: proxies, trust),
    built here from percent-encoded paths and sent with `AsyncClient.send`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: TokenProvider,
        limiter: Limiter,
        policy: RetryPolicy,
        *,
        base_url: str,
        metrics: Metrics,
        tracing: Tracing | None = None,
        breaker: Breaker | None = None,
        max_response_bytes: int = Limits.response_bytes,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._metrics = metrics
        self._max_response_bytes = max_response_bytes
        self._tracing = tracing or Tracing()
        self._breaker = breaker
        self._http = http
        # Paths are built from percent-encoded parts and always start with '/'.
        self._base_url = base_url.rstrip("/")
        # httpx parses a URL string in pure Python (~30 µs, 2 % of a command's CPU); a create
        # command's path is the same every time, and an httpx.URL is immutable.
        self._url = functools.lru_cache(maxsize=256)(self._parse_url)
        base = httpx.URL(self._base_url)
        self._server = (base.scheme, base.host, base.port)
        self._tokens = tokens
        self._limiter = limiter
        self._policy = policy
        self._now = now

    def _parse_url(self, path: str) -> httpx.URL:
        return httpx.URL(self._base_url + path)

    async def send(
        self, request: ApiRequest, *, before_sending: BeforeSending | None = None
    ) -> ApiResponse:
        """`before_sending` is awaited just before each attempt leaves, after its budget wait,
        token and breaker: the caller's recovery point (it may refuse by raising)."""
        tries = _Tries(self._policy, self._metrics)
        try:
            return await self._with_retries(request, tries, before_sending)
        except REDIS_UNAVAILABLE:
            raise DependencyDown(REDIS) from None
        except WorkerError as error:
            error.attempts = tries.sent
            raise

    async def _with_retries(
        self, request: ApiRequest, tries: _Tries, before_sending: BeforeSending | None
    ) -> ApiResponse:
        while True:
            try:
                return await self._attempt(request, tries, before_sending)
            except TransientError as error:
                if tries.stop(error):
                    raise tries.exhausted(error) from None
                await asyncio.sleep(tries.wait(error))

    async def _wait_for_budget(self, request: ApiRequest) -> None:
        """The next slot of the budget for this attempt, in the request's class."""
        metrics = self._metrics
        if not self._tokens.held:
            # The process's first calls: fetch before the wait. Behind one fetch after it, a
            # burst's slots and the next few would leave together, more than the budget allows
            # in a second at the API. A token lives far longer than a wait; it is taken again.
            await self._tokens.token()
        waiting = metrics.limiter_waiting.labels(request.priority)
        waiting.inc()
        try:
            with self._tracing.span("budget wait"):
                metrics.limiter_wait.observe(await self._limiter.acquire(request.priority))
        finally:
            waiting.dec()
        metrics.budget_used.labels(request.priority).inc()

    async def _attempt(
        self, request: ApiRequest, tries: _Tries, before_sending: BeforeSending | None
    ) -> ApiResponse:
        metrics, tracing = self._metrics, self._tracing
        await self._wait_for_budget(request)
        # After the wait: the token is fresh when the request leaves. A fetch here delays
        # this one send; it happens once per token lifetime for the whole process.
        token = await self._tokens.token()
        permit = await self._breaker.admit() if self._breaker is not None else None
        if before_sending is not None:
            await before_sending()
        tries.sent += 1
        attributes = None
        if tracing.recording:
            scheme, host, port = self._server
            attributes = http_attributes(
                request.method, request.endpoint, scheme=scheme, host=host, port=port,
                attempt=tries.sent,
            )  # fmt: skip
        with tracing.span(
            f"{request.method} {request.endpoint}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                answer = await self._send(request, token, tries, permit)
            except WorkerError as error:
                span.set_attribute("error.type", error.code)
                raise
            span.set_attribute("http.response.status_code", answer.status)
            if not answer.is_success:
                span.set_attribute("error.type", str(answer.status))
        opened = await self._report(permit, failed=answer.status >= 500)
        if answer.is_success:
            if answer.too_large:
                raise self._too_large(request, answer.status)
            return ApiResponse(answer.status, _document(answer), tries.sent)
        if answer.status == 404 and request.method == "DELETE" and tries.answer_lost:
            # Gone: the attempt whose answer was lost deleted it. The result names the ids.
            return ApiResponse(answer.status, {}, tries.sent)
        failure = classify_failure(
            request.method,
            answer.status,
            answer.headers,
            answer.body,
            now=self._now(),
            default_retry_after=self._policy.default_retry_after,
            repeatable=request.safe_to_repeat,
        )
        if isinstance(failure, RateLimited):
            metrics.rate_limited.inc()
            await self._limiter.pause(failure.retry_after)
        elif isinstance(failure, TokenRejected):
            if tries.refreshed:
                raise ApiError(
                    failure.message, status=failure.status, code=failure.code, dead_letter=True
                )
            tries.refreshed = True
            self._tokens.invalidate(token)
        elif opened and isinstance(failure, TransientError):
            raise DependencyDown(self._breaker_name)
        raise failure

    def _too_large(self, request: ApiRequest, status: int) -> WorkerError:
        limit = f"more than MAX_RESPONSE_BYTES ({self._max_response_bytes} bytes)"
        if request.safe_to_repeat:
            return ResponseTooLarge(
                f"The API answered HTTP {status} with {limit}; the answer was not read.",
                status=status,
            )
        return OutcomeUnknown(
            f"The API answered HTTP {status} with {limit}: the request took effect but its "
            "result was not read, so it is not sent again.",
            status=status,
        )

    async def _send(
        self, request: ApiRequest, token: str, tries: _Tries, permit: Permit | None
    ) -> Answer:
        """One attempt on the wire, inside its span (whose context the request carries)."""
        metrics = self._metrics
        started = time.perf_counter()
        status = 0
        # The request's own: each API generation wants its version's media type.
        headers = {"Authorization": f"Bearer {token}", "Accept": request.accept}
        # traceparent/tracestate/baggage of the attempt's span, by the configured propagators.
        propagate.inject(headers)
        body = None
        if request.json is not None:
            # What httpx's `json=` sends, at a third of its cost (13 µs there).
            body = json.dumps(
                request.json, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            headers["Content-Type"] = "application/json"
        url = self._url(request.path)
        if request.query:
            # httpx percent-encodes each name and value: a value cannot add a parameter.
            url = url.copy_with(params=request.query)
        http_request = self._http.build_request(request.method, url, content=body, headers=headers)
        try:
            response = await self._http.send(http_request, stream=True)
            status = response.status_code
            answer = await read_answer(response, self._max_response_bytes, self._http.timeout.read)
        except TRANSPORT_ERRORS as exc:
            opened = await self._report(permit, failed=True)
            if opened and (never_sent(exc) or request.safe_to_repeat):
                raise DependencyDown(self._breaker_name) from None
            if never_sent(exc):
                raise TransientError(f"{type(exc).__name__} before the request was sent.") from None
            if request.safe_to_repeat:
                tries.answer_lost = True
                raise TransientError(
                    f"{type(exc).__name__} while waiting for the answer."
                ) from None
            raise OutcomeUnknown(
                f"{type(exc).__name__} after the request was sent: it may have taken effect, "
                "so it was not repeated."
            ) from None
        finally:
            metrics.api_latency.labels(request.method, request.endpoint, str(status)).observe(
                time.perf_counter() - started
            )
        return answer

    @property
    def _breaker_name(self) -> str:
        return self._breaker.name if self._breaker is not None else "api"

    async def _report(self, permit: Permit | None, *, failed: bool) -> bool:
        """Tell the breaker how the send went; True if it is open now. The API's answer is
        never lost for it: a Redis that fails here only leaves the breaker's count behind."""
        if self._breaker is None or permit is None:
            return False
        try:
            if failed:
                return await self._breaker.failed(permit)
            await self._breaker.succeeded(permit)
        except REDIS_UNAVAILABLE:
            return False
        return False


def _document(answer: Answer) -> dict[str, Any]:
    if not answer.body:
        return {}
    try:
        # json.loads detects UTF-8/16/32 itself (RFC 8259); httpx's .json() first decodes
        # the text through its charset logic, three times the cost.
        document = json.loads(answer.body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can follow
        document = None
    if not isinstance(document, dict):
        raise ApiError(
            f"The API answered HTTP {answer.status} with a body that is not a JSON object.",
            status=answer.status,
            code="UnexpectedResponse",
            dead_letter=True,
        )
    return document
