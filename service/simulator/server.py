"""Running the simulator: in the caller's event loop (`serve`) or in a background thread for
tests (`running_simulator`), always on a real socket so clients exercise real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from .admin import ADMIN_PREFIX
from .app import build_app
from .config import SimulatorConfig
from .lifecycle import JobOutcome
from .oauth import TOKEN_PATH
from .oidc import DISCOVERY_PATH
from .requestlog import RecordedRequest, RequestKind
from .state import SimulatorState

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
_START_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 10.0
_BACKLOG = 2048


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files to serve HTTPS with (tests of private CAs and proxies make their own)."""

    certfile: Path
    keyfile: Path


class _SimulatorServer(uvicorn.Server):
    """uvicorn's server without its signal handling, releasing hung requests at shutdown."""

    def __init__(
        self,
        config: SimulatorConfig,
        sock: socket.socket,
        certificate: ServerCertificate | None = None,
    ) -> None:
        self.state = SimulatorState(config)
        self.socket = sock
        super().__init__(
            uvicorn.Config(
                build_app(self.state),
                log_level="warning",
                lifespan="off",
                access_log=False,
                ssl_certfile=certificate.certfile if certificate else None,
                ssl_keyfile=certificate.keyfile if certificate else None,
            )
        )

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The program embedding us (CLI, demo, tests) owns SIGINT/SIGTERM; uvicorn would
        # otherwise take them over and re-raise them after shutting down.
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.state.closing.set()
        await super().shutdown(sockets)

    async def serve_socket(self) -> None:
        await self.serve(sockets=[self.socket])


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so a busy port fails the caller with a plain OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    # The protocol must be spelled out: asyncio sets TCP_NODELAY only on sockets whose proto
    # is IPPROTO_TCP, and without it every keep-alive answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _base_url(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def serve(
    config: SimulatorConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> None:
    """Serve in the current event loop until cancelled, then shut down cleanly.

    The socket is listening when the first await happens, so clients started right after
    the task is created are answered once the loop gets to them.
    """
    server = _SimulatorServer(config, bind_socket(host, port))
    task = asyncio.ensure_future(server.serve_socket())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise


class SimulatorHandle:
    """Where a running simulator is, whom it accepts, and its admin API as sync calls."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url
        self.token_url = base_url + TOKEN_PATH
        self.discovery_url = base_url + DISCOVERY_PATH
        self.client_id = client_id
        self.client_secret = client_secret
        self._admin = httpx.Client(
            base_url=base_url + ADMIN_PREFIX, timeout=10.0, verify=verify, trust_env=False
        )

    def __repr__(self) -> str:
        return f"SimulatorHandle(base_url={self.base_url!r}, client_id={self.client_id!r})"

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._admin.request(method, path, **kwargs)
        response.raise_for_status()
        return response

    def requests(self, kind: RequestKind | None = "api") -> list[RecordedRequest]:
        """The request log, oldest first; `kind=None` gives every kind."""
        params = {"kind": kind} if kind is not None else {}
        entries = self._call("GET", "/requests", params=params).json()["requests"]
        return [RecordedRequest.from_json(entry) for entry in entries]

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Change knobs live; returns the whole config (client secrets masked)."""
        result: dict[str, Any] = self._call("PATCH", "/config", json=fields).json()
        return result

    def storm(self, seconds: float, retry_after: int | None = None) -> None:
        self._call("POST", "/storm", json={"seconds": seconds, "retry_after": retry_after})

    def drop_next(self, count: int = 1) -> None:
        """The next `count` API calls take effect, then lose their answer (connection closed)."""
        self._call("POST", "/drop-next", json={"count": count})

    def set_job_outcome(self, job_id: str, outcome: JobOutcome) -> None:
        """Make one job end `failed` or `success` regardless of the config (before it ends)."""
        self._call("POST", f"/jobs/{job_id}/outcome", json={"outcome": outcome})

    def expire_tokens(self) -> None:
        """Revoke every token issued so far: API calls with them get 401 from now on."""
        self._call("POST", "/expire-tokens")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def close(self) -> None:
        self._admin.close()


def _wait_until_started(server: _SimulatorServer, thread: threading.Thread) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the simulator thread ended before the server started")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("the simulator did not start in time")
        time.sleep(0.005)


@contextlib.contextmanager
def running_simulator(
    config: SimulatorConfig | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    certificate: ServerCertificate | None = None,
    admin_verify: ssl.SSLContext | bool = True,
) -> Iterator[SimulatorHandle]:
    """Run a simulator in a background thread (own event loop) for the `with` block.

    Port 0 picks a free port; the handle says which. The server is accepting connections
    when the block starts and is shut down when it ends. With a `certificate` it serves HTTPS,
    and the handle's admin calls verify it with `admin_verify`.
    """
    config = config or SimulatorConfig()
    sock = bind_socket(host, port)
    base_url = _base_url(sock, "https" if certificate else "http")
    server = _SimulatorServer(config, sock, certificate)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve_socket()), name="itwin-simulator", daemon=True
    )
    thread.start()
    try:
        _wait_until_started(server, thread)
        client_id, client_secret = next(iter(config.clients.items()))
        handle = SimulatorHandle(base_url, client_id, client_secret, admin_verify)
        try:
            yield handle
        finally:
            handle.close()
    finally:
        server.should_exit = True
        thread.join(_STOP_TIMEOUT_SECONDS)
