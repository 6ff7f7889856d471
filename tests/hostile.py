"""A stand-in for the iTwin API that answers what no honest API gives, over a real socket; and
the commands of a producer that sends what no schema allows (`outsized_commands`).

`workspace.create` commands choose their answer by the workspace `name`, `workspace.get`
commands by the `workspaceId`; any other name or id gets an ordinary answer:

| name / id | answer |
|---|---|
| `huge` | 201, Content-Length 300 MB, the body streamed until the client hangs up |
| `endless` | 200 or 201 without a length, an endless body |
| `big-result` | 201, a valid workspace of `result_bytes` (id `w-big`) |
| `cut` | 201, JSON cut off half-way (the HTTP body complete) |
| `html` | 201, a gateway's HTML page |
| `redirect` | 307 to the same path on another host (`elsewhere`) |
| `hang` | no answer ever |
| `trickle` | 201, then one byte of body every 0.2 s |
| `refusal` | 422 with an error object of 3.5 MB: a megabyte of message, 10 000 details |
| `gateway-*` (an id) | the first GET a 502 HTML page, then 200 |
| `size-<n>` (an id) | 200, a workspace of n bytes, the last `answer_delay` s after the rest |

It also serves the token endpoint (any client). Every API request is counted, by method and
name or id, and the bytes of body it was sent; `elsewhere` counts what reached the other host.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from types import TracebackType
from typing import Any

from aiohttp import web

HUGE_BYTES = 300 * 1000 * 1000
CHUNK = b"x" * 65536
HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
CLIENT_ID, CLIENT_SECRET = "hostile-client", "hostile-secret"


class Server:
    """An aiohttp application on a loopback address, port chosen by the system."""

    def __init__(self, app: web.Application, host: str) -> None:
        # Short: a `hang` handler never ends on its own, shutting down cancels it.
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        self.host = host
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()


class HostileApi:
    """`async with HostileApi() as api:` serves at `api.base_url` until the block ends."""

    def __init__(self, *, result_bytes: int = 2 * 1024 * 1024) -> None:
        self.result_bytes = result_bytes
        self.answer_delay = 0.0
        self.requests: Counter[tuple[str, str]] = Counter()
        """API requests by (method, name or id)."""
        self.sent: Counter[str] = Counter()
        """Bytes of body written, by name or id."""
        self.tokens_issued = 0
        self.elsewhere: list[tuple[str, str, bool]] = []
        """(method, path, whether it carried an Authorization header) at the other host."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/connect/token", self._token)
        app.router.add_post("/contextcapture/workspaces", self._create)
        app.router.add_get("/contextcapture/workspaces/{id}", self._get)
        self._api = Server(app, "127.0.0.1")
        other = web.Application()
        other.router.add_route("*", "/{path:.*}", self._other_host)
        # Another address: another host as far as a URL (and a client's credentials) goes.
        self._other = Server(other, "127.0.0.2")
        self._gateway_failed: set[str] = set()

    @property
    def base_url(self) -> str:
        return self._api.url

    @property
    def token_url(self) -> str:
        return f"{self._api.url}/connect/token"

    @property
    def client_id(self) -> str:
        return CLIENT_ID

    @property
    def client_secret(self) -> str:
        return CLIENT_SECRET

    async def __aenter__(self) -> HostileApi:
        await self._api.start()
        await self._other.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._api.stop()
        await self._other.stop()

    def posts(self, name: str) -> int:
        return self.requests["POST", name]

    async def _token(self, request: web.Request) -> web.Response:
        self.tokens_issued += 1
        return web.json_response({"access_token": "hostile-token", "expires_in": 3600})

    async def _other_host(self, request: web.Request) -> web.Response:
        self.elsewhere.append((request.method, request.path, "Authorization" in request.headers))
        return web.json_response({"workspace": {"id": "w-elsewhere", "name": "elsewhere"}})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        name = str((await request.json()).get("name"))
        self.requests["POST", name] += 1
        if name == "huge":
            return await self._stream(request, name, 201, declared=HUGE_BYTES)
        if name == "endless":
            return await self._stream(request, name, 201)
        if name == "trickle":
            return await self._stream(request, name, 201, chunk=b" ", pause=0.2)
        if name == "big-result":
            workspace = {"id": "w-big", "name": name, "description": "d" * self.result_bytes}
            return web.json_response({"workspace": workspace}, status=201)
        if name == "cut":
            body = json.dumps({"workspace": {"id": "w-cut", "name": "cut"}}).encode()
            return web.Response(
                body=body[: len(body) // 2], status=201, content_type="application/json"
            )
        if name == "html":
            return web.Response(body=HTML, status=201, content_type="text/html")
        if name == "redirect":
            location = f"{self._other.url}{request.path}"
            return web.Response(status=307, headers={"Location": location})
        if name == "hang":
            await asyncio.Event().wait()
        if name == "refusal":
            return web.json_response(_refusal(), status=422)
        workspace = {"id": f"w-{uuid.uuid4().hex[:12]}", "name": name}
        return web.json_response({"workspace": workspace}, status=201)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        workspace_id = request.match_info["id"]
        self.requests["GET", workspace_id] += 1
        if workspace_id == "endless":
            return await self._stream(request, workspace_id, 200)
        if workspace_id.startswith("size-"):
            return await self._sized(request, workspace_id, int(workspace_id.removeprefix("size-")))
        if workspace_id.startswith("gateway-") and workspace_id not in self._gateway_failed:
            self._gateway_failed.add(workspace_id)
            return web.Response(body=HTML, status=502, content_type="text/html")
        return web.json_response({"workspace": {"id": workspace_id, "name": "w"}})

    async def _sized(
        self, request: web.Request, workspace_id: str, size: int
    ) -> web.StreamResponse:
        """A workspace of exactly `size` bytes; all but its last byte at once, so that answers
        asked for together are all held by the client together."""
        empty = json.dumps({"workspace": {"id": workspace_id, "description": ""}}).encode()
        padding = b"d" * (size - len(empty))
        body = empty.replace(b'"description": ""', b'"description": "' + padding + b'"')
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:-1])
        await asyncio.sleep(self.answer_delay)
        await response.write(body[-1:])
        return response

    async def _stream(
        self,
        request: web.Request,
        name: str,
        status: int,
        *,
        declared: int | None = None,
        chunk: bytes = CHUNK,
        pause: float = 0.0,
    ) -> web.StreamResponse:
        """Write `chunk` after `chunk` (up to `declared` bytes, if given) until the client
        hangs up."""
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        if declared is not None:
            response.content_length = declared
        await response.prepare(request)
        try:
            while declared is None or self.sent[name] < declared:
                await response.write(chunk)
                self.sent[name] += len(chunk)
                if pause:
                    await asyncio.sleep(pause)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what a bounded reader does
        return response


def _refusal() -> dict[str, Any]:
    detail = {"code": "InvalidValue", "message": "m" * 100, "target": "t" * 100}
    return {
        "error": {
            "code": "InvalidWorkspace",
            "message": "M" * 1_000_000,
            "target": "name",
            "details": [detail] * 10_000,
        }
    }


def outsized_commands() -> dict[str, bytes]:
    """`workspace.create` bodies no schema allows, by what they are (the issue's flood)."""
    return {
        "a 10 MB name": json.dumps({"name": "x" * 10_000_000}).encode(),
        "100 000 nested arrays": b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "200 000 keys": json.dumps({f"k{i}": 0 for i in range(200_000)}).encode(),
        "50 000 unknown keys": json.dumps(
            {"name": "w", **dict.fromkeys(map(str, range(50_000)), 0)}
        ).encode(),
        "bad UTF-8": b'{"name": "\xff\xfe"}',
    }


MEGABYTE_COMMAND = b'{"name": "w", "pad": "' + b"x" * 999_976 + b'"}'
"""One megabyte (10^6 bytes) of invalid command: the issue's flood sends 300."""
