"""The one HTTP client for the API and the token endpoint: trust, proxies, pool, timeouts.

httpx's `AsyncClient` on aiohttp's connection pool (`httpx-aiohttp`): httpx reads the proxy
variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, upper or lower case) and mounts
a proxied transport per pattern, as for any httpx user; aiohttp does the sockets, at 0.19 CPU-ms
per request against 1.09 on httpx's own transport (`./dev bench http_clients`).

TLS is always verified. Trusted: the system's CA store (which `SSL_CERT_FILE` / `SSL_CERT_DIR`
replace, as OpenSSL reads them), certifi's bundle when the system has none, and `CA_BUNDLE` on
top (a private CA, e.g. of a TLS-intercepting egress proxy). Nothing turns verification off.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import aiohttp
import certifi
import httpx
from httpx_aiohttp import HttpxAiohttpClient

from service.settings import SettingsError

USER_AGENT = "itwin-worker"
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


def http_client(
    *,
    timeout: httpx.Timeout,
    max_connections: int,
    ca_bundle: Path | None = None,
    proxies_from_environment: bool = True,
) -> httpx.AsyncClient:
    """The client every API and token call goes through."""
    return HttpxAiohttpClient(
        verify=tls_context(ca_bundle),
        trust_env=proxies_from_environment,
        timeout=timeout,
        limits=httpx.Limits(max_connections=max_connections),
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
