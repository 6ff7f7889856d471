"""`/healthz`, `/readyz` and `/metrics` on the worker's HTTP port, in the worker's own loop.

Liveness only says the event loop answers; readiness asks the broker (and Redis when one is
configured) right now, so a worker that lost its broker stops being ready until it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.metrics import Metrics

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Probes:
    def __init__(self, metrics: Metrics, readiness: Callable[[], Awaitable[dict[str, bool]]]):
        self._metrics = metrics
        self._readiness = readiness
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0
        """The bound port (useful when configured as 0)."""
        self.app = Starlette(
            routes=[
                Route("/healthz", self._healthz),
                Route("/readyz", self._readyz),
                Route("/metrics", self._metrics_page),
            ]
        )

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def _readyz(self, request: Request) -> Response:
        checks = await self._readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def _metrics_page(self, request: Request) -> Response:
        return Response(self._metrics.render(), media_type=PROMETHEUS)

    async def start(self, host: str, port: int) -> None:
        if self._server is not None:
            return
        config = uvicorn.Config(
            self.app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = None
