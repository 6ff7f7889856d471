"""Networks real clusters have: an egress proxy, private CAs, NO_PROXY, untrusted servers.

Every part is on 127.0.0.1 and started here: the simulator serving HTTPS with a certificate
from a CA this module makes (trustme), and proxy.py as the forward proxy, the only place where
the `.itwin.test` names resolve. TLS is verified end to end, through the CONNECT tunnel too.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from service.producer import Producer
from service.simulator import ServerCertificate, SimulatorHandle, running_simulator
from tests.integration.test_commands_end_to_end import job_body
from tests.support import ITWIN, StartWorker, free_port, request

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE",
                   "SSL_CERT_DIR")  # fmt: skip
NAMES = ["api.itwin.test", "login.itwin.test", "localhost", "127.0.0.1"]


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    certificate: ServerCertificate
    context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert(*NAMES)
    ca_file, certfile, keyfile = (directory / n for n in ("ca.pem", "server.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    issued.private_key_pem.write_to_path(str(keyfile))
    certfile.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    context = ssl.create_default_context(cafile=str(ca_file))
    return Pki(ca_file, ServerCertificate(certfile, keyfile), context)


@pytest.fixture
def https_sim(pki: Pki) -> Iterator[SimulatorHandle]:
    """Request it before `start_worker`: stopped after the worker, it has no keep-alive
    connections left to wait for."""
    with running_simulator(certificate=pki.certificate, admin_verify=pki.context) as handle:
        yield handle


@dataclass(frozen=True)
class ForwardProxy:
    url: str
    log: Path

    def upstreams(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    """proxy.py in its own process, stopped by its PID."""
    port = free_port()
    log = tmp_path / "upstreams.log"
    output = open(tmp_path / "proxy.out", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port),
         "--num-acceptors", "1", "--num-workers", "1",
         "--plugins", "tests.integration.proxy_plugin.LoopbackTestNames"],
        cwd=REPO,
        env={**_without_proxies(os.environ), "ITWIN_TEST_PROXY_LOG": str(log),
             "PYTHONPATH": str(REPO)},
        stdout=output,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_for_port(port, process)
        yield ForwardProxy(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()


def _without_proxies(environment: Any) -> dict[str, str]:
    return {k: v for k, v in environment.items() if k.upper() not in PROXY_VARIABLES}


def _wait_for_port(port: int, process: subprocess.Popen[bytes], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"proxy.py exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("proxy.py did not listen in time")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy or CA variable from the machine leaks into a test (any case)."""
    for name in os.environ:
        if name.upper() in PROXY_VARIABLES:
            monkeypatch.delenv(name)
    return monkeypatch


def _port(sim: SimulatorHandle) -> int:
    return int(sim.base_url.rsplit(":", 1)[1])


async def five_commands(amqp_url: str) -> list[dict[str, Any]]:
    """One command of each of the five kinds; their events, in order."""
    async with Producer(amqp_url, "itwin.commands") as producer:
        created = await request(producer, "workspace.create", {"name": "w", "iTwinId": ITWIN})
        events = [created]
        if created["type"] != "workspace.created":
            return [
                *events,
                await request(producer, "workspace.get", {"workspaceId": "x" * 8}),
                await request(producer, "job.create", job_body("x" * 8)),
                await request(producer, "repository.create", _repository()),
                await request(producer, "application.create", _application()),
            ]
        workspace_id = created["result"]["id"]
        events.append(await request(producer, "workspace.get", {"workspaceId": workspace_id}))
        events.append(await request(producer, "job.create", job_body(workspace_id)))
        events.append(await request(producer, "repository.create", _repository()))
        events.append(await request(producer, "application.create", _application()))
        return events


def _repository() -> dict[str, str]:
    return {"iTwinId": ITWIN, "class": "GeographicInformationSystem", "subClass": "WebMapService",
            "uri": "https://maps.example.com/wms"}  # fmt: skip


def _application() -> dict[str, str]:
    return {"displayName": "Egress App", "version": "1.0"}


SUCCESSES = [
    "workspace.created", "workspace.retrieved", "job.created", "repository.created",
    "application.created",
]  # fmt: skip


async def test_every_call_goes_through_the_egress_proxy_with_tls_verified_end_to_end(
    https_sim: SimulatorHandle,
    proxy: ForwardProxy,
    amqp_url: str,
    start_worker: StartWorker,
    pki: Pki,
    clean_environment: pytest.MonkeyPatch,
) -> None:
    port = _port(https_sim)
    clean_environment.setenv("HTTPS_PROXY", proxy.url)
    await start_worker(
        api_base_url=f"https://api.itwin.test:{port}",
        token_url=f"https://login.itwin.test:{port}/connect/token",
        ca_bundle=str(pki.ca_file),
    )

    events = await five_commands(amqp_url)

    assert [event["type"] for event in events] == SUCCESSES, events
    assert set(proxy.upstreams()) == {f"api.itwin.test:{port}", f"login.itwin.test:{port}"}
    assert [r.kind for r in https_sim.requests(kind=None)].count("token") == 1
    assert len(https_sim.requests(kind="api")) == 5


async def test_a_no_proxy_host_is_reached_directly(
    https_sim: SimulatorHandle,
    proxy: ForwardProxy,
    amqp_url: str,
    start_worker: StartWorker,
    pki: Pki,
    clean_environment: pytest.MonkeyPatch,
) -> None:
    port = _port(https_sim)
    clean_environment.setenv("https_proxy", proxy.url)  # lower case, as curl reads it too
    clean_environment.setenv("no_proxy", "localhost,.internal.example")
    await start_worker(
        api_base_url=f"https://api.itwin.test:{port}",
        token_url=f"https://localhost:{port}/connect/token",
        ca_bundle=str(pki.ca_file),
    )

    events = await five_commands(amqp_url)

    assert [event["type"] for event in events] == SUCCESSES, events
    assert proxy.upstreams() == [f"api.itwin.test:{port}"], "the token went direct"


async def test_proxies_from_the_environment_can_be_switched_off(
    https_sim: SimulatorHandle,
    proxy: ForwardProxy,
    amqp_url: str,
    start_worker: StartWorker,
    pki: Pki,
    clean_environment: pytest.MonkeyPatch,
) -> None:
    port = _port(https_sim)
    clean_environment.setenv("HTTPS_PROXY", proxy.url)
    await start_worker(
        api_base_url=f"https://localhost:{port}",
        token_url=f"https://localhost:{port}/connect/token",
        ca_bundle=str(pki.ca_file),
        proxies_from_environment=False,
    )

    events = await five_commands(amqp_url)

    assert [event["type"] for event in events] == SUCCESSES, events
    assert proxy.upstreams() == []


@pytest.mark.parametrize("trust", ["CA_BUNDLE", "SSL_CERT_FILE"])
async def test_a_private_ca_is_trusted_when_configured(
    trust: str,
    https_sim: SimulatorHandle,
    amqp_url: str,
    start_worker: StartWorker,
    pki: Pki,
    clean_environment: pytest.MonkeyPatch,
) -> None:
    port = _port(https_sim)
    overrides: dict[str, Any] = {}
    if trust == "CA_BUNDLE":
        overrides["ca_bundle"] = str(pki.ca_file)
    else:
        clean_environment.setenv("SSL_CERT_FILE", str(pki.ca_file))
    await start_worker(
        api_base_url=f"https://localhost:{port}",
        token_url=f"https://localhost:{port}/connect/token",
        **overrides,
    )

    events = await five_commands(amqp_url)

    assert [event["type"] for event in events] == SUCCESSES, events


async def test_an_untrusted_server_gets_nothing_and_every_command_a_failure_event(
    https_sim: SimulatorHandle,
    amqp_url: str,
    start_worker: StartWorker,
    clean_environment: pytest.MonkeyPatch,
) -> None:
    port = _port(https_sim)
    worker = await start_worker(
        api_base_url=f"https://localhost:{port}",
        token_url=f"https://localhost:{port}/connect/token",
    )

    events = await five_commands(amqp_url)

    assert len(events) == 5
    for event in events:
        assert event["type"].endswith(".failed"), event
        assert event["error"]["code"] == "Unauthorized", event
        assert event["error"]["status"] is None
    assert https_sim.requests(kind=None) == [], "no token request, no secret, no API call"
    checks = await worker.readiness()
    assert checks["consuming"], "the worker stays up"
    assert checks["broker"]
