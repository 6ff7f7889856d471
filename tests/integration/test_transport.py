"""The aiohttp transport keeps httpx's exceptions, and the one difference retries rely on:
failures before the request left are connect errors, failures after it are not."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from service.transport import AiohttpTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=AiohttpTransport(max_connections=4), timeout=httpx.Timeout(0.5)
    ) as http:
        yield http


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return head + await reader.readexactly(length)


async def test_answers_come_through_with_status_headers_and_body(
    client: httpx.AsyncClient,
) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nretry-after: 3\r\n"
            b'Content-Length: 11\r\n\r\n{"id": "x"}'
        )
        await writer.drain()
        writer.close()

    server, base = await _serve(handler)
    async with server:
        response = await client.post(f"{base}/p?q=1", json={"a": 1}, headers={"Accept": "v1"})
    assert (response.status_code, response.json()) == (201, {"id": "x"})
    assert response.headers["retry-after"] == "3"
    assert seen[0].startswith(b"POST /p?q=1 HTTP/1.1\r\n")
    assert b"accept: v1" in seen[0].lower()
    assert seen[0].endswith(b'{"a":1}')


async def test_nobody_listening_is_a_connect_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await client.get(f"http://127.0.0.1:{port}/")


async def test_no_answer_in_time_is_a_read_timeout(client: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(2)

    server, base = await _serve(handler)
    async with server:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{base}/", json={})


async def test_connection_closed_after_the_request_is_not_a_connect_error(
    client: httpx.AsyncClient,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    server, base = await _serve(handler)
    async with server:
        with pytest.raises(httpx.TransportError) as caught:
            await client.post(f"{base}/", json={})
    assert not isinstance(caught.value, httpx.ConnectError | httpx.ConnectTimeout)
