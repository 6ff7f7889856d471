"""A Service-like TCP front for a RabbitMQ cluster in tests: each new connection goes to the
first backend that accepts it, tried in order, and lives as long as both ends do.

    python -m tests.tcp_front LISTEN_PORT BACKEND_PORT [BACKEND_PORT ...]

What a Kubernetes Service is to the worker: one address for the cluster, with a node that died
no longer reached (here: refused, so the next one is tried). Prints "listening" once it accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

CONNECT_TIMEOUT = 1.0
CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _backend(ports: list[int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    for port in ports:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await asyncio.open_connection("127.0.0.1", port)
    return None


async def serve(listen: int, ports: list[int]) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = await _backend(ports)
        if backend is None:
            writer.close()
            return
        upstream_reader, upstream_writer = backend
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", listen)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen_port, *backend_ports = (int(argument) for argument in sys.argv[1:])
    asyncio.run(serve(listen_port, backend_ports))
