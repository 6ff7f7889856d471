"""One pipelined Redis connection for the Lua scripts every command runs.

Each command runs two scripts (claim + first limiter slot, then record), and every further API
attempt one more (the limiter). Through redis-py a script call measured 111 µs of CPU (pool
checkout, a health check that reads the socket, argument encoding, response parsing in Python
layers); on this connection 23 µs (/tmp micro-benchmark, 32 callers in flight, uvloop), which is
about 9 % of the worker's CPU per command. Calls are written in one piece as they come and their
answers, which Redis sends in request order, go to the callers in that order: any number in
flight on one socket, no lock, no pool.

redis-py stays for the tests and benchmarks; its URL syntax and exception
types are used here too, so callers and operators see one Redis client: `redis://`, `rediss://`
(TLS with the system's CA certificates) and `unix://` URLs, with user, password and database.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeout

Argument = str | bytes | int | float


class _Protocol(asyncio.Protocol):
    """Answers matched to calls in order; a lost connection fails every call still waiting."""

    def __init__(self, answer_timeout: float) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._answer_timeout = answer_timeout
        self._progress = self._loop.time()
        """When the oldest waiting call was made or the last answer came."""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without subclassing asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._loop.call_later(self._answer_timeout / 2, self._watch)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A Redis that vanished without a FIN is noticed eventually, not never.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self._progress = self._loop.time()
        self._reader.feed(data)
        try:
            while (answer := self._reader.gets()) is not False:
                waiter = self._waiting.popleft()
                if waiter.done():  # its caller was cancelled
                    continue
                if isinstance(answer, ResponseError):
                    waiter.set_exception(_response_error(str(answer)))
                else:
                    waiter.set_result(answer)
        except (hiredis.ProtocolError, IndexError) as exc:
            self._lose(ConnectionError(f"Unreadable answer from Redis: {type(exc).__name__}."))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(ConnectionError("Connection to Redis lost."))

    def call(self, arguments: Sequence[Argument]) -> asyncio.Future[Any]:
        assert self._transport is not None
        if self.closed:
            raise ConnectionError("Connection to Redis lost.")
        loop = self._loop
        if not self._waiting:
            self._progress = loop.time()
        waiter = loop.create_future()
        self._waiting.append(waiter)
        if not self._outgoing:
            # Calls made in the same turn of the loop leave in one write: on loopback a send
            # costs tens of µs of kernel time, more than the rest of a call.
            loop.call_soon(self._flush)
        # hiredis's stub types the argument as a 1-tuple; it takes any length.
        self._outgoing.append(hiredis.pack_command(tuple(arguments)))  # type: ignore[arg-type]
        return waiter

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if not self.closed and self._transport is not None:
            self._transport.write(b"".join(outgoing))

    def _watch(self) -> None:
        """A Redis that stops answering (hung, or gone without a FIN) fails its callers."""
        if self.closed:
            return
        if self._waiting and self._loop.time() - self._progress > self._answer_timeout:
            self._lose(RedisTimeout(f"No answer from Redis for {self._answer_timeout:g} s."))
            return
        self._loop.call_later(self._answer_timeout / 2, self._watch)

    def close(self) -> None:
        self._lose(ConnectionError("Connection to Redis closed."))

    def _lose(self, error: RedisError) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)


def _response_error(message: str) -> RedisError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
        return AuthenticationError(message)
    return ResponseError(message)


class Script:
    """A Lua script run by its SHA1; sent whole once when Redis does not know it yet."""

    def __init__(self, connection: ScriptConnection, source: str) -> None:
        self._connection = connection
        self._source = source
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[Argument]) -> Any:
        try:
            return await self._connection.call("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            # A restarted or flushed Redis: EVAL runs the script and caches it again.
            return await self._connection.call("EVAL", self._source, len(keys), *keys, *args)


class ScriptConnection:
    """Connects on first use and again after a loss; the call that meets a loss fails."""

    def __init__(
        self, url: str, connect_timeout: float = 5.0, answer_timeout: float = 10.0
    ) -> None:
        options = parse_url(url)
        self._kind = options.get("connection_class")
        # Loading the CA store takes milliseconds: once, not at every reconnection.
        self._tls = ssl.create_default_context() if self._kind is SSLConnection else None
        self._host: str = options.get("host", "localhost")
        self._port: int = options.get("port", 6379)
        self._path: str | None = options.get("path")
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self._db: int = options.get("db", 0)
        self._connect_timeout = connect_timeout
        self._answer_timeout = answer_timeout
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def call(self, *arguments: Argument) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await protocol.call(arguments)

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            try:
                async with asyncio.timeout(self._connect_timeout):
                    protocol = await self._open()
                    try:
                        await self._handshake(protocol)
                    except BaseException:
                        protocol.close()
                        raise
            except TimeoutError:
                raise ConnectionError(
                    f"No connection to Redis within {self._connect_timeout:g} s."
                ) from None
            except OSError as exc:
                raise ConnectionError(f"{type(exc).__name__} connecting to Redis: {exc}") from None
            self._protocol = protocol
            return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        steps = []
        if self._password is not None:
            user = [self._username] if self._username else []
            steps.append(protocol.call(["AUTH", *user, self._password]))
        if self._db:
            steps.append(protocol.call(["SELECT", self._db]))
        await asyncio.gather(*steps)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()

        def protocol_factory() -> _Protocol:
            return _Protocol(self._answer_timeout)

        if self._kind is UnixDomainSocketConnection and self._path:
            _, protocol = await loop.create_unix_connection(protocol_factory, self._path)
        else:
            _, protocol = await loop.create_connection(
                protocol_factory,
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._host if self._tls else None,
            )
        return protocol

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
