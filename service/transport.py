"""httpx's interface on a small HTTP/1.1 engine of our own: the API client's transport.

The HTTP client is the worker's first limit (bench/throughput). Per request, plain httpx
(httpcore + h11) measured 2.4 ms of CPU at 32 in flight and aiohttp ~0.4 ms, of which most is
machinery this client never uses: cookies, redirects, proxies, streaming bodies, tracing. This
module does only what the worker needs: keep-alive connections per origin (TLS for https),
requests written in one piece, answers parsed by httptools (llhttp, the C parser uvicorn uses).

The failures keep httpx's exception types, mapped with care because the retry policy depends on
the difference: a failure before the request left (pool, connect) is always safe to repeat; one
after it (read timeout, connection lost, unreadable answer) is not.

Not supported, on purpose: proxies, HTTP/2, `Expect: 100-continue`, upgrades, request bodies
that are not in memory. The API client needs none of them.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections import deque
from typing import Any, cast

import httptools
import httpx

# Control characters (CR and LF among them) in the request line or a header would let a value
# end its line and start another: request smuggling. httpx does not refuse them itself.
_UNSAFE = re.compile(rb"[\x00-\x1f\x7f]")
_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")
# The API's answers are a few kB; a server streaming without end must not exhaust memory.
MAX_BODY_BYTES = 16 * 1024 * 1024

Origin = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; one request at a time, answers parsed as they arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[httpx.Response] | None = None
        self._request: httpx.Request | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._headers_done = False
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout: float | None = None
        self._last_read = 0.0
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without subclassing asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A request is one small write; Nagle would hold it for the previous one's ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:
            # Nothing was asked: a server that talks unprompted (a 408 before closing an idle
            # connection) has ended this connection's usefulness.
            self.close()
            return
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"Unreadable answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is None:
            return
        # Neither a length nor chunks: the body ran until the server closed the connection,
        # which llhttp cannot know without us.
        if self._headers_done and not any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self._headers
        ):
            self._complete(keep_alive=False)
        else:
            self._fail(
                httpx.RemoteProtocolError("Server disconnected without sending a complete answer.")
            )

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            self._fail(httpx.RemoteProtocolError(f"Answer larger than {MAX_BODY_BYTES} bytes."))
            raise ValueError("stop parsing")  # llhttp stops at a callback's exception
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:
            # An interim answer (103 Early Hints from a proxy): the real one follows.
            self._headers, self._body, self._body_size = [], [], 0
            self._headers_done = False
            return
        self._complete(keep_alive=self._parser.should_keep_alive())

    # one exchange

    async def exchange(
        self, request: httpx.Request, data: bytes, read_timeout: float | None
    ) -> httpx.Response:
        assert self._transport is not None
        answer: asyncio.Future[httpx.Response] = self._loop.create_future()
        self._answer, self._request = answer, request
        self._headers, self._body, self._body_size = [], [], 0
        self._headers_done = False
        self._read_timeout = read_timeout
        self._transport.write(data)
        if read_timeout is not None:
            self._last_read = self._loop.time()
            self._timer = self._loop.call_at(self._last_read + read_timeout, self._check_timeout)
        try:
            return await answer
        except BaseException:
            # Cancelled or failed mid-exchange: a late answer would be read as the next one's.
            self.close()
            raise
        finally:
            self._answer = self._request = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _check_timeout(self) -> None:
        assert self._read_timeout is not None
        due = self._last_read + self._read_timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        self._timer = None
        self._fail(httpx.ReadTimeout(f"No data for {self._read_timeout:g} s."))

    def _complete(self, keep_alive: bool) -> None:
        answer, request = self._answer, self._request
        # Anything after this answer and before the next request is unsolicited.
        self._answer = None
        if answer is None or answer.done():
            return
        if not keep_alive:
            self.close()
        answer.set_result(
            httpx.Response(
                self._parser.get_status_code(),
                headers=self._headers,
                content=b"".join(self._body),
                request=request,
                extensions={"http_version": b"HTTP/1.1"},
            )
        )

    def _fail(self, error: httpx.TransportError) -> None:
        answer, self._answer = self._answer, None
        self.close()
        if answer is not None and not answer.done() and self._request is not None:
            error.request = self._request
            answer.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class HttpTransport(httpx.AsyncBaseTransport):
    """Keep-alive pools per origin; at most `max_connections` requests in flight in all."""

    def __init__(
        self,
        max_connections: int,
        keepalive_seconds: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        # Shorter than common servers' idle timeouts, so we drop an idle connection before the
        # server does: a POST on a connection the server just closed would look like a request
        # whose answer was lost.
        self._keepalive = keepalive_seconds
        self._ssl = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        data = _serialise(request, await request.aread())
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        if self._slots.locked():
            try:
                await asyncio.wait_for(self._slots.acquire(), timeouts.get("pool"))
            except TimeoutError:
                raise httpx.PoolTimeout("No connection free in time.", request=request) from None
        else:
            await self._slots.acquire()
        try:
            connection = self._idle_connection(origin) or await self._connect(
                origin, timeouts.get("connect"), request
            )
            response = await connection.exchange(request, data, timeouts.get("read"))
            if not connection.closed:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(origin, deque()).append(connection)
            return response
        finally:
            self._slots.release()

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        expired = time.monotonic() - self._keepalive
        while idle:
            # Most recently used first: it is the least likely to have been closed by the server.
            connection = idle.pop()
            if not connection.closed and connection.idle_since > expired:
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    async def _connect(
        self, origin: Origin, within: float | None, request: httpx.Request
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                ),
                within,
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"No connection to {host}:{port} within {within} s.", request=request
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(
                f"{type(exc).__name__} connecting to {host}:{port}: {exc}", request=request
            ) from None
        self._open = {c for c in self._open if not c.closed}
        self._open.add(connection)
        return connection

    async def aclose(self) -> None:
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()


def _serialise(request: httpx.Request, body: bytes) -> bytes:
    """The request as one block of bytes, refusing anything that could split a line."""
    target = request.url.raw_path
    if _UNSAFE_TARGET.search(target):
        raise httpx.LocalProtocolError("Unsafe character in the request target.", request=request)
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if _UNSAFE.search(name) or _UNSAFE.search(value):
            raise httpx.LocalProtocolError(
                f"Unsafe character in the {name.decode('ascii', 'replace')!r} header.",
                request=request,
            )
        lines += (name, b": ", value, b"\r\n")
    lines += (b"\r\n", body)
    return b"".join(lines)
