"""CPU per API request of the maintained HTTP clients the worker could send through.

`python -m bench.http_clients [--requests 3000] [--concurrency 32] [--repeat 3]
[--latency-ms 0]`

Each option sends the same `POST /contextcapture/workspaces` as the worker (same headers, JSON
body, bearer token) to the simulator, which runs in its own process so its CPU stays off the
measured one, `concurrency` requests in flight, on uvloop as the worker runs. Per option and
repetition: CPU seconds of this process (user + system) per 1 000 requests, and requests/s.
Options:

- httpx: `httpx.AsyncClient` on its own transport (httpcore), the way it reads proxy variables.
- httpx-aiohttp: `httpx.AsyncClient` on `httpx_aiohttp.AiohttpTransport`.
- aiohttp: a bare `aiohttp.ClientSession`, without httpx's request and response objects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvloop
from httpx_aiohttp import AiohttpTransport

from bench._common import Simulator, progress

ACCEPT = "application/vnd.bentley.itwin-platform.v1+json"
BODY = json.dumps({"name": "w"}).encode()
Send = Callable[[], Awaitable[int]]


async def _token(sim: Simulator) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            sim.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": sim.client_id,
                "client_secret": sim.client_secret,
                "scope": "itwin-platform",
            },
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token


def _headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Accept": ACCEPT,
        "User-Agent": "itwin-worker-bench",
        "Content-Type": "application/json",
    }


async def _httpx_option(
    url: str, headers: dict[str, str], concurrency: int, transport: Any = None
) -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(
        transport=transport,
        limits=httpx.Limits(max_connections=concurrency + 8),
        timeout=httpx.Timeout(30.0, connect=5.0),
    )

    async def send() -> int:
        response = await client.post(url, content=BODY, headers=headers)
        return response.status_code

    return send, client.aclose


async def _options(
    url: str, headers: dict[str, str], concurrency: int
) -> dict[str, tuple[Send, Callable[[], Awaitable[None]]]]:
    options = {"httpx": await _httpx_option(url, headers, concurrency)}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 8))
    options["httpx-aiohttp"] = await _httpx_option(
        url, headers, concurrency, AiohttpTransport(client=session)
    )
    bare = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 8))

    async def send_bare() -> int:
        async with bare.post(url, data=BODY, headers=headers) as response:
            await response.read()
            return response.status

    options["aiohttp"] = (send_bare, bare.close)
    return options


async def _run(send: Send, requests: int, concurrency: int) -> tuple[float, float]:
    remaining = requests

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await send()
            if status != 201:
                raise RuntimeError(f"the simulator answered {status}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / requests * 1000, requests / wall


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as workdir, Simulator(Path(workdir)) as sim:
        sim.reset(args.latency_ms)
        headers = _headers(await _token(sim))
        url = f"{sim.base_url}/contextcapture/workspaces"
        options = await _options(url, headers, args.concurrency)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in options}
        for send, _ in options.values():
            await _run(send, 200, args.concurrency)  # warm-up: connections, code paths
        for repetition in range(args.repeat):
            for name, (send, _) in options.items():
                sim.reset(args.latency_ms)
                headers.update(_headers(await _token(sim)))
                results[name].append(await _run(send, args.requests, args.concurrency))
                progress(f"run {repetition + 1}: {name} done")
        for _, close in options.values():
            await close()
    print(f"{args.requests} requests x {args.repeat}, {args.concurrency} in flight, "
          f"API latency {args.latency_ms:g} ms (medians)")  # fmt: skip
    print(f"{'option':<15} {'CPU-s / 1000 req':>17} {'req/s':>8}")
    for name, runs in results.items():
        cpu = statistics.median(run[0] for run in runs)
        rate = statistics.median(run[1] for run in runs)
        print(f"{name:<15} {cpu:>17.3f} {rate:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_clients", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
