"""The HTTP transport keeps httpx's exceptions, and the one difference retries rely on:
failures before the request left are connect or pool errors, failures after it are not.

Each test runs a real server on a local socket, sometimes a deliberately rude one.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from service import transport as transport_module
from service.transport import HttpTransport
from tests.integration.conftest import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler, tls: ssl.SSLContext | None = None) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    return server, f"{'https' if tls else 'http'}://127.0.0.1:{port}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=HttpTransport(max_connections=4), timeout=httpx.Timeout(0.5)
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


def _answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in extra)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


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
    assert b"\r\nhost: 127.0.0.1:" in seen[0].lower()
    assert b"accept: v1" in seen[0].lower()
    assert seen[0].endswith(b'{"a":1}')


async def test_a_connection_is_kept_alive_and_reused(client: httpx.AsyncClient) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(_answer(b"ok"))
            await writer.drain()
        writer.close()

    server, base = await _serve(handler)
    async with server:
        for _ in range(5):
            assert (await client.get(f"{base}/")).content == b"ok"
    assert connections == 1


async def test_connection_close_is_honoured(client: httpx.AsyncClient) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(_answer(b"bye", b"Connection: close"))
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    server, base = await _serve(handler)
    async with server:
        for _ in range(3):
            assert (await client.get(f"{base}/")).content == b"bye"
    assert connections == 3


async def test_chunked_and_close_delimited_bodies_are_read_whole(
    client: httpx.AsyncClient,
) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"[1,", b"2,", b"3]"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b'"a": 1}')
        await writer.drain()
        writer.close()

    for handler, expected in ((chunked, [1, 2, 3]), (until_close, {"a": 1})):
        server, base = await _serve(handler)
        async with server:
            assert (await client.get(f"{base}/")).json() == expected


async def test_an_interim_answer_is_passed_over_for_the_real_one(
    client: httpx.AsyncClient,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n")
        writer.write(_answer(b"final", b"X-Final: yes"))
        await writer.drain()
        writer.close()

    server, base = await _serve(handler)
    async with server:
        response = await client.get(f"{base}/")
    assert (response.status_code, response.content) == (200, b"final")
    assert "link" not in response.headers
    assert response.headers["x-final"] == "yes"


async def test_nobody_listening_is_a_connect_error(client: httpx.AsyncClient) -> None:
    port = free_port()
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


async def test_a_slow_answer_that_keeps_coming_is_not_a_timeout(
    client: httpx.AsyncClient,
) -> None:
    """The read timeout is per read, as httpx's is: data every 0.3 s outlasts 0.5 s in all."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
        for byte in b"abc":
            await asyncio.sleep(0.3)
            writer.write(bytes([byte]))
            await writer.drain()
        writer.close()

    server, base = await _serve(handler)
    async with server:
        assert (await client.get(f"{base}/")).content == b"abc"


async def test_connection_closed_after_the_request_is_not_a_connect_error(
    client: httpx.AsyncClient,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    server, base = await _serve(handler)
    async with server:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await client.post(f"{base}/", json={})
    assert caught.value.request.method == "POST"


async def test_garbage_is_a_protocol_error_and_the_connection_is_not_reused(
    client: httpx.AsyncClient,
) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA GARBAGE\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()

    server, base = await _serve(handler)
    async with server:
        assert (await client.get(f"{base}/")).content == b"ok"
        await asyncio.sleep(0.05)
        assert (await client.get(f"{base}/")).content == b"ok"
    assert connections == 2


async def test_an_answer_over_the_size_cap_is_refused(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "MAX_BODY_BYTES", 1000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_answer(b"x" * 1001))
        await writer.drain()
        writer.close()

    server, base = await _serve(handler)
    async with server:
        with pytest.raises(httpx.RemoteProtocolError, match="larger than 1000 bytes"):
            await client.get(f"{base}/")


async def test_waiting_longer_than_the_pool_timeout_is_a_pool_timeout() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await release.wait()
        writer.write(_answer(b"late"))
        await writer.drain()
        writer.close()

    server, base = await _serve(handler)
    transport = HttpTransport(max_connections=1)
    async with (
        server,
        httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, pool=0.2)) as http,
    ):
        first = asyncio.create_task(http.get(f"{base}/"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.get(f"{base}/")
        release.set()
        assert (await first).content == b"late"


async def test_header_values_that_would_split_a_line_are_refused(
    client: httpx.AsyncClient,
) -> None:
    with pytest.raises(httpx.LocalProtocolError):
        await client.get("http://127.0.0.1:9/", headers={"Authorization": "Bearer x\r\nHost: evil"})


async def test_a_cancelled_request_does_not_leave_its_answer_for_the_next(
    client: httpx.AsyncClient,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            if request.startswith(b"GET /slow"):
                await asyncio.sleep(0.2)
            writer.write(_answer(request.split(b" ")[1]))
            await writer.drain()
        writer.close()

    server, base = await _serve(handler)
    async with server:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.get(f"{base}/slow"), 0.05)
        await asyncio.sleep(0.3)
        assert (await client.get(f"{base}/fast")).content == b"/fast"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_verifies_the_server_and_speaks_tls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_answer(b"secret"))
        await writer.drain()
        writer.close()

    server, base = await _serve(handler, tls=server_tls)
    async with server:
        trusting = HttpTransport(4, ssl_context=ssl.create_default_context(cafile=str(cert)))
        async with httpx.AsyncClient(transport=trusting, timeout=2) as http:
            assert (await http.get(f"{base}/")).content == b"secret"
        async with httpx.AsyncClient(transport=HttpTransport(4), timeout=2) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(f"{base}/")
