"""The one HTTP client for the API and the token endpoint: trust, proxies, pool, timeouts.

httpx's `AsyncClient` on aiohttp's connection pool (`httpx-aiohttp`): httpx reads the proxy
variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, upper or lower case) and mounts
a proxied transport per pattern, as for any httpx user; aiohttp does the sockets, at 0.19 CPU-ms
per request against 1.09 on httpx's own transport (`./dev bench http_clients`).

TLS is always verified. Trusted: the system's CA store (which `SSL_CERT_FILE` / `SSL_CERT_DIR`
replace, as OpenSSL reads them), certifi's bundle when the system has none, and `CA_BUNDLE` on
top (a private CA, e.g. of a TLS-intercepting egress proxy). Nothing turns verification off.

Every request is sent once. aiohttp on its own repeats a GET, PUT or DELETE whose connection
closed before the answer (RFC 9112 §9.3.1 allows it), silently: that repeat would skip the rate
limiter, be missing from the event's `attempts`, and hide from the API client that an answer was
lost (a DELETE repeated after its lost answer meets 404 because it worked). A client middleware,
aiohttp's hook that runs for each attempt, refuses the second; the API client's own retry loop
then decides, as for any lost answer.

Every answer is read streamed and bounded (`read_answer`): a Content-Length over the bound is
refused before a byte of the body is read, and a body without one is read only up to the bound;
either way the connection is closed, not drained. The whole body must arrive within the read
timeout, which on its own only bounds each wait for the next bytes: an answer trickling in a
byte at a time would otherwise hold its command for ever.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import ssl
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import certifi
import httpx
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

from service.settings import SettingsError

USER_AGENT = "itwin-worker"
KEEPALIVE_SECONDS = 3.0
_CERT_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def tls_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """A verifying client context: system CAs (or certifi), plus `ca_bundle` if given."""
    context = ssl.create_default_context()
    operator_chose = any(os.environ.get(name) for name in _CERT_VARIABLES)
    if not operator_chose and context.cert_store_stats()["x509_ca"] == 0:
        # A minimal image without ca-certificates: the public CAs as certifi ships them.
        context.load_verify_locations(cafile=certifi.where())
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            # At start-up, naming the variable: not as a failure of every call later.
            raise SettingsError(
                f"invalid settings:\n  ITWIN_WORKER_CA_BUNDLE: {ca_bundle} is not a readable "
                f"PEM file of CA certificates ({type(exc).__name__})"
            ) from None
    return context


_SENT: contextvars.ContextVar[bool] = contextvars.ContextVar("itwin_worker_sent", default=False)
"""Whether the request being handled in this task has gone out once already."""


async def _send_once(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    if _SENT.get():
        raise aiohttp.ServerDisconnectedError(
            "the connection closed before the answer; not repeated here, the caller decides"
        )
    _SENT.set(True)
    return await handler(request)


class SendOnceTransport(AiohttpTransport):
    """httpx-aiohttp's transport on a session that never repeats a request by itself."""

    def get_client(self) -> aiohttp.ClientSession:
        if self.client is not None:
            return super().get_client()
        limit = self.limits.max_connections
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            limit=limit if limit is not None else 0,  # aiohttp's 0 is httpx's None: no limit
        )
        return aiohttp.ClientSession(connector=connector, middlewares=(_send_once,))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # A fresh mark per request: each runs its aiohttp attempts in the context set here.
        mark = _SENT.set(False)
        try:
            return await super().handle_async_request(request)
        finally:
            _SENT.reset(mark)


_DEFAULT_LIMITS = httpx.Limits()


class _Client(HttpxAiohttpClient):
    """httpx's client, its direct and proxied transports all `SendOnceTransport`s.

    httpx builds them through these two hooks (httpx-aiohttp overrides the same two); the
    arguments are httpx's, proxies included, as it read them from the environment.
    """

    def _init_transport(  # noqa: PLR0917 - httpx's signature
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: typing.Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: typing.Any,
    ) -> httpx.AsyncBaseTransport:
        if transport is not None:
            return transport
        return SendOnceTransport(verify=verify, cert=cert, trust_env=trust_env, limits=limits)

    def _init_proxy_transport(  # noqa: PLR0917 - httpx's signature
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: typing.Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        **kwargs: typing.Any,
    ) -> httpx.AsyncBaseTransport:
        return SendOnceTransport(
            verify=verify, cert=cert, trust_env=trust_env, limits=limits, proxy=proxy
        )


def http_client(
    *,
    timeout: httpx.Timeout,
    max_connections: int,
    ca_bundle: Path | None = None,
    proxies_from_environment: bool = True,
) -> httpx.AsyncClient:
    """The client every API and token call goes through."""
    return _Client(
        verify=tls_context(ca_bundle),
        trust_env=proxies_from_environment,
        timeout=timeout,
        # An idle connection is closed here before servers close theirs (uvicorn after 5 s,
        # most proxies and gateways later): a request sent on a connection the server is
        # closing at that moment would lose its answer, and a POST could not be repeated.
        limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=KEEPALIVE_SECONDS),
        headers={"User-Agent": USER_AGENT},
        # The API answers in place; a redirect would be a misconfigured base URL.
        follow_redirects=False,
    )


# httpx-aiohttp maps every aiohttp connection error to httpx's `ConnectTimeout`, also a
# connection lost after the request went out; the aiohttp error it chains tells them apart.
_AIOHTTP_NOT_SENT = (
    aiohttp.ClientConnectorError,  # no connection: DNS, refused, TLS verification, proxy
    aiohttp.ConnectionTimeoutError,  # connecting, or waiting for a pooled connection
    aiohttp.ClientHttpProxyError,  # the proxy refused the tunnel
    aiohttp.InvalidURL,
)
_HTTPX_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
)


def never_sent(error: Exception) -> bool:
    """Whether a failed request provably never reached the server (safe to repeat a POST)."""
    cause = error.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, _AIOHTTP_NOT_SENT)
    return isinstance(error, _HTTPX_NOT_SENT)


TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError, aiohttp.ClientError)
"""What a failed exchange raises: httpx's errors, and the aiohttp ones httpx-aiohttp lets
through unmapped (a malformed answer, a payload cut short)."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, its body read within the bound."""

    status: int
    headers: httpx.Headers
    body: bytes
    """Empty when the body was too large to read."""
    too_large: bool = False
    """The body was (or said it was) larger than the bound: it was not read."""

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


async def read_answer(response: httpx.Response, max_bytes: int, within: float | None) -> Answer:
    """The body of a streamed `response`, never read past `max_bytes`, in at most `within`
    seconds (None: no bound). The response is closed in every case; one not read to its end
    takes its connection with it (aiohttp does not put it back in the pool).

    A body that does not arrive in time raises `httpx.ReadTimeout`, as a late head does.
    """
    status, headers = response.status_code, response.headers
    try:
        declared = _content_length(headers)
        if declared is not None and declared > max_bytes:
            return Answer(status, headers, b"", too_large=True)
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(within):
            # Decoded bytes (gzip and the like): what the worker holds in memory.
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    return Answer(status, headers, b"", too_large=True)
                chunks.append(chunk)
        return Answer(status, headers, b"".join(chunks))
    except TimeoutError:
        raise httpx.ReadTimeout(f"the answer's body took longer than {within} s") from None
    finally:
        await response.aclose()


def _content_length(headers: httpx.Headers) -> int | None:
    """The declared length; None when there is none (or it is no number aiohttp would have
    let through); a number of 19 digits or more is simply huge."""
    value = headers.get("content-length", "")
    if not (value.isascii() and value.isdigit()):
        return None
    return int(value) if len(value) < _HUGE_DIGITS else sys.maxsize


_HUGE_DIGITS = 19
