"""OAuth2 client credentials: one cached token per process, one fetch for all callers.

The token is refreshed a margin before it expires, and dropped when the API rejects it; callers
that arrive during a fetch wait for that fetch instead of starting their own. Neither the client
secret nor a token is ever put into a message, a log line or an exception.

With a circuit breaker (`service.breaker`), a token endpoint that cannot be reached or answers
5xx is an outage, not the command's failure: `DependencyDown`, and the command waits in its
queue. A TLS certificate the worker does not trust is a refusal (`Unauthorized`), as before.

The endpoint's answer is read only up to `MAX_TOKEN_ANSWER_BYTES`: a larger one is no token.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from service.breaker import Breaker, Permit
from service.errors import Unauthorized
from service.http_client import Answer, read_answer
from service.limits import MAX_TOKEN_ANSWER_BYTES
from service.metrics import Metrics
from service.outages import DependencyDown
from service.tracing import Tracing


@dataclass(frozen=True)
class ClientCredentials:
    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float

    def __repr__(self) -> str:
        return f"_Token(refresh_at={self.refresh_at!r})"


class TokenProvider:
    """Hands out a valid access token, fetching a new one only when it must."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        credentials: ClientCredentials,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self._tracing = tracing or Tracing()
        self._metrics = metrics
        self._http = http
        self._breaker = breaker
        self._credentials = credentials
        self._margin = refresh_margin
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0
        """Tokens fetched so far: tests and metrics check that callers share refreshes."""

    async def token(self) -> str:
        current = self._token
        if current is not None and self._clock() < current.refresh_at:
            return current.value
        async with self._lock:
            # Whoever held the lock before us may have fetched a fresh one already.
            current = self._token
            if current is None or self._clock() >= current.refresh_at:
                current = await self._fetch()
                self._token = current
            return current.value

    @property
    def held(self) -> bool:
        """A token was fetched and not refused since (it may be due for a refresh)."""
        return self._token is not None

    def invalidate(self, rejected: str) -> None:
        """Drop the token the API refused, unless a caller has already replaced it."""
        if self._token is not None and self._token.value == rejected:
            self._token = None

    async def _fetch(self) -> _Token:
        # A span of its own, with no attribute at all: the form holds the secret, the answer
        # the token, and the endpoint is the operator's setting.
        with self._tracing.span("token fetch") as span:
            try:
                token = await self._fetch_token()
            except Unauthorized as error:
                span.set_attribute("error.type", error.code)
                self._count("failure")
                raise
        self._count("success")
        return token

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.token_fetches.labels(outcome).inc()

    async def _fetch_token(self) -> _Token:
        credentials = self._credentials
        form = {
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret.get_secret_value(),
            "scope": credentials.scope,
        }
        permit = await self._breaker.admit() if self._breaker is not None else None
        self.fetches += 1
        request = self._http.build_request(
            "POST", credentials.token_url, data=form, headers={"Accept": "application/json"}
        )
        try:
            response = await self._http.send(request, stream=True)
            answer = await read_answer(response, MAX_TOKEN_ANSWER_BYTES, self._http.timeout.read)
        except httpx.HTTPError as exc:
            if not _tls_refused(exc):
                await self._outage(permit)
            raise Unauthorized(
                f"The token endpoint could not be reached ({type(exc).__name__}).",
                retriable=True,
            ) from None
        status = answer.status
        if status >= 500:
            await self._outage(permit)
        elif permit is not None and self._breaker is not None:
            await self._breaker.succeeded(permit)
        if status != 200:
            raise Unauthorized(
                f"The token endpoint answered HTTP {status}{_oauth_error(answer)}.",
                retriable=status >= 500 or status == 429,
            )
        try:
            document = json.loads(answer.body)
            value = document["access_token"]
            lifetime = float(document.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise Unauthorized(
                "The token endpoint answered without a usable access_token.", retriable=True
            ) from None
        if not isinstance(value, str) or not value:
            raise Unauthorized("The token endpoint answered with an empty access_token.")
        # Short-lived tokens (tests, some IdPs) get a tenth of their lifetime as margin: the
        # token is taken just before each send, so the margin only has to cover one request's
        # way to the API, and a larger one would fetch more often than once per lifetime.
        margin = min(self._margin, lifetime / 10)
        return _Token(value, self._clock() + lifetime - margin)

    async def _outage(self, permit: Permit | None) -> None:
        """Count the failure; with a breaker the caller waits for the endpoint instead."""
        if self._breaker is None or permit is None:
            return
        await self._breaker.failed(permit)
        raise DependencyDown(self._breaker.name)


def _tls_refused(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _oauth_error(answer: Answer) -> str:
    """The RFC 6749 `error` code if there is one; never the body, which could echo input."""
    try:
        code = json.loads(answer.body).get("error")
    except (ValueError, AttributeError, RecursionError):
        return ""
    if isinstance(code, str) and code.isascii() and code.replace("_", "").isalnum():
        return f" ({code})"
    return ""
