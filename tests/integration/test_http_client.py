"""The API client on the real HTTP stack (httpx on aiohttp), against servers that misbehave.

A lost answer must be told apart from a request that never left: the first may have taken
effect (a POST is not repeated), the second is always safe to repeat. httpx-aiohttp maps both to
httpx's `ConnectTimeout`, so these tests hold the worker to the difference over real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from service.api import ApiClient, RetryPolicy
from service.auth import ClientCredentials, TokenProvider
from service.commands import ApiRequest
from service.errors import OutcomeUnknown, RetriesExhausted
from service.http_client import http_client
from service.limiter import LocalLimiter, buckets_for
from service.metrics import Metrics
from tests.support import free_port


class HangUpServer:
    """Reads each request to its end, then closes the connection without answering."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0

    async def __aenter__(self) -> HangUpServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        self.requests += 1
        writer.close()


def _token_endpoint(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"access_token": "t0k3n", "expires_in": 3600})


@pytest.fixture
async def hang_up() -> AsyncIterator[HangUpServer]:
    async with HangUpServer() as server:
        yield server


def _client(base_url: str) -> tuple[ApiClient, httpx.AsyncClient]:
    http = http_client(timeout=httpx.Timeout(5.0), max_connections=8)
    tokens = TokenProvider(
        httpx.AsyncClient(transport=httpx.MockTransport(_token_endpoint)),
        ClientCredentials("https://login.example/token", "id", SecretStr("secret"), "scope"),
    )
    client = ApiClient(
        http,
        tokens,
        LocalLimiter(buckets_for(1000.0, 100)),
        RetryPolicy(attempts=3, initial=0.01, maximum=0.02),
        base_url=base_url,
        metrics=Metrics(frozenset()),
    )
    return client, http


async def test_a_post_whose_answer_was_lost_is_not_repeated(hang_up: HangUpServer) -> None:
    client, http = _client(f"http://127.0.0.1:{hang_up.port}")
    request = ApiRequest("POST", "/contextcapture/workspaces", {"name": "w"}, "workspaces")
    try:
        with pytest.raises(OutcomeUnknown) as raised:
            await client.send(request)
    finally:
        await http.aclose()
    assert hang_up.requests == 1
    assert raised.value.attempts == 1


async def test_a_get_whose_answer_was_lost_is_retried(hang_up: HangUpServer) -> None:
    client, http = _client(f"http://127.0.0.1:{hang_up.port}")
    request = ApiRequest("GET", "/contextcapture/workspaces/w1", None, "workspace")
    try:
        with pytest.raises(RetriesExhausted) as raised:
            await client.send(request)
    finally:
        await http.aclose()
    # aiohttp would repeat an idempotent request once by itself when the connection drops;
    # the worker's client refuses that, so every send is one of its own counted attempts.
    assert hang_up.requests == 3
    assert raised.value.attempts == 3
    assert "while waiting for the answer" in raised.value.message


async def test_a_post_that_could_not_connect_is_retried() -> None:
    client, http = _client(f"http://127.0.0.1:{free_port()}")
    request = ApiRequest("POST", "/contextcapture/workspaces", {"name": "w"}, "workspaces")
    try:
        with pytest.raises(RetriesExhausted) as raised:
            await client.send(request)
    finally:
        await http.aclose()
    assert "before the request was sent" in raised.value.message
    assert raised.value.attempts == 3
