"""The baseline consumers `bench.throughput` compares the worker with, one per process.

`python -m bench._variants a|b` (and `python -m bench._variant_faststream` for c) consume the
`workspace.create` queue until SIGTERM/SIGINT:

- a: raw aio-pika; per command: publish a persistent event with publisher confirms, then ack.
  No HTTP: the broker-only ceiling.
- b: raw aio-pika + plain httpx: POST the workspace to the simulator, then as (a).
- c: a bare FastStream subscriber (same queue object, ack policy and decoder as the worker)
  + plain httpx, publishing with FastStream's confirmed `broker.publish`.

Each writes `worker consuming` once it consumes, like the worker. Connection details come from
BENCH_* variables (so the client secret is not on a command line): BENCH_AMQP_URL, BENCH_QUEUE,
BENCH_EVENT_EXCHANGE, BENCH_PREFETCH, BENCH_API_URL, BENCH_TOKEN_URL, BENCH_CLIENT_ID,
BENCH_CLIENT_SECRET.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

ACCEPT = "application/vnd.bentley.itwin-platform.v1+json"
EVENT_TYPE = "workspace.created"
JSON = "application/json"
READY_MARKER = "worker consuming"
WORKSPACES = "/contextcapture/workspaces"
GRACE_SECONDS = 10.0
"""How long a stopping variant lets in-flight commands finish (the worker has its own)."""

Call = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Config:
    amqp_url: str
    queue: str
    event_exchange: str
    prefetch: int
    api_url: str
    token_url: str
    client_id: str
    client_secret: str

    @classmethod
    def from_environment(cls) -> Config:
        env = os.environ
        return cls(
            amqp_url=env["BENCH_AMQP_URL"],
            queue=env["BENCH_QUEUE"],
            event_exchange=env["BENCH_EVENT_EXCHANGE"],
            prefetch=int(env["BENCH_PREFETCH"]),
            api_url=env.get("BENCH_API_URL", ""),
            token_url=env.get("BENCH_TOKEN_URL", ""),
            client_id=env.get("BENCH_CLIENT_ID", ""),
            client_secret=env.get("BENCH_CLIENT_SECRET", ""),
        )

    def environment(self) -> dict[str, str]:
        """The BENCH_* variables that hand this config to a child process."""
        return {
            "BENCH_AMQP_URL": self.amqp_url,
            "BENCH_QUEUE": self.queue,
            "BENCH_EVENT_EXCHANGE": self.event_exchange,
            "BENCH_PREFETCH": str(self.prefetch),
            "BENCH_API_URL": self.api_url,
            "BENCH_TOKEN_URL": self.token_url,
            "BENCH_CLIENT_ID": self.client_id,
            "BENCH_CLIENT_SECRET": self.client_secret,
        }


def event_body(command_id: str | None, correlation_id: str | None, result: Any) -> bytes:
    """A success event of the worker's shape and size."""
    command_id = command_id or str(uuid.uuid4())
    return json.dumps(
        {
            "eventId": str(uuid.uuid4()),
            "type": EVENT_TYPE,
            "commandId": command_id,
            "correlationId": correlation_id or command_id,
            "occurredAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "attempts": 1 if result else 0,
            "result": result,
        }
    ).encode()


async def fetch_token(http: httpx.AsyncClient, config: Config) -> str:
    """One client-credentials token, fetched once at start."""
    response = await http.post(
        config.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": config.client_id,
            "client_secret": config.client_secret,
            "scope": "itwin-platform",
        },
        headers={"Accept": JSON},
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def http_client(config: Config) -> httpx.AsyncClient:
    """An HTTP client sized like the worker's (prefetch + 8 connections)."""
    return httpx.AsyncClient(
        base_url=config.api_url,
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=config.prefetch + 8),
        headers={"User-Agent": "itwin-worker-bench"},
    )


async def create_workspace(http: httpx.AsyncClient, config: Config) -> Call:
    """The API call of one `workspace.create` command, with the worker's headers."""
    token = await fetch_token(http, config)
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}

    async def call() -> dict[str, Any]:
        response = await http.post(WORKSPACES, json={"name": "w"}, headers=headers)
        response.raise_for_status()
        document: dict[str, Any] = response.json()["workspace"]
        return document

    return call


async def no_call() -> dict[str, Any]:
    return {}


async def run_aio_pika(config: Config, call: Call, stop: asyncio.Event) -> None:
    """Variants a and b: consume → (call) → publish confirmed persistent event → ack.

    On stop: cancel the consumer, let in-flight commands finish (as the worker does), close.
    """
    connection = await aio_pika.connect(config.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=config.prefetch)
        exchange = await channel.get_exchange(config.event_exchange, ensure=True)
        queue = await channel.get_queue(config.queue, ensure=True)
        handler = Handler(call, exchange)
        tag = await queue.consume(handler)
        print(READY_MARKER, flush=True)
        await stop.wait()
        await queue.cancel(tag)
        await handler.drained(within=GRACE_SECONDS)


class Handler:
    """The per-message work of variants a and b, counting what is in flight."""

    def __init__(self, call: Call, exchange: AbstractExchange) -> None:
        self._call = call
        self._exchange = exchange
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._handle(message)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        result = await self._call()
        await self._exchange.publish(
            aio_pika.Message(
                event_body(message.message_id, message.correlation_id, result),
                message_id=str(uuid.uuid4()),
                correlation_id=message.correlation_id or message.message_id,
                type=EVENT_TYPE,
                content_type=JSON,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=EVENT_TYPE,
        )
        await message.ack()

    async def drained(self, within: float) -> None:
        """Wait (at most `within` seconds) until no message is being handled."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._idle.wait()


async def main_async(variant: str) -> None:
    config = Config.from_environment()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if variant == "a":
        await run_aio_pika(config, no_call, stop)
        return
    async with http_client(config) as http:
        call = await create_workspace(http, config)
        await run_aio_pika(config, call, stop)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._variants", description=__doc__)
    parser.add_argument("variant", choices=["a", "b"])
    asyncio.run(main_async(parser.parse_args().variant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
