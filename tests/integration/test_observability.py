"""Issue 6 acceptance: probes, metrics and log lines, read from outside as operators do."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import aiormq
import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.app import Worker
from service.commands import COMMANDS
from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import SpawnWorkers, StartWorker, rabbitmqctl, worker_settings


def body(document: object) -> bytes:
    return json.dumps(document).encode()


async def test_readyz_is_503_until_the_broker_is_connected(
    amqp_url: str, sim: SimulatorHandle
) -> None:
    worker = Worker(worker_settings(amqp_url, sim))
    await worker.probes.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{worker.probes.port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/healthz")).status_code == 200
            before = await client.get("/readyz")
            assert before.status_code == 503
            assert before.json()["checks"]["broker"] is False
            await worker.start()
            after = await client.get("/readyz")
            assert after.status_code == 200, after.text
            assert after.json()["checks"] == {
                "consuming": True,
                "broker": True,
                "consumers": True,
                "api": True,
                "token_endpoint": True,
            }
    finally:
        await worker.stop()


async def test_after_the_broker_drops_the_connection_every_consumer_consumes_again(
    amqp_url: str, start_worker: StartWorker, sim: SimulatorHandle
) -> None:
    """aio-pika restores the consumers (FastStream #2758 saw them not come back); readiness
    checks each one, and says so when one is missing."""
    worker = await start_worker()
    vhost = amqp_url.rsplit("/", 1)[1]
    for line in rabbitmqctl("list_connections", "pid", "vhost").splitlines():
        pid, _, connection_vhost = line.partition("\t")
        if connection_vhost == vhost:
            rabbitmqctl("close_connection", pid, "test: the broker drops the worker")
    async with asyncio.timeout(30):
        while not (await worker.readiness())["consumers"]:
            await asyncio.sleep(0.2)
    async with Producer(amqp_url, "itwin.commands") as producer:
        async with asyncio.timeout(20):
            answer = await producer.request("workspace.create", body({"name": "after"}))
    assert answer["type"] == "workspace.created"
    # A consumer gone under the library (cancelled behind aio-pika's back): not ready.
    queue = await worker.broker.declare_queue(worker.topology.command_queue(COMMANDS[0]))
    underlay = await queue.channel.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)
    await underlay.basic_cancel(next(iter(underlay.consumers)))
    assert (await worker.readiness())["consumers"] is False


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


REPOSITORY = Path(__file__).resolve().parents[2]
WATCHED = [
    REPOSITORY / "helm/itwin-worker/templates/prometheusrule.yaml",
    REPOSITORY / "helm/itwin-worker/dashboards/itwin-worker.json",
]
METRIC = re.compile(r"\bitwin_worker_[a-z_]+")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


async def test_every_metric_the_alerts_and_the_dashboard_name_is_exported(
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    async with httpx.AsyncClient() as client:
        page = await client.get(f"http://127.0.0.1:{worker.probes.port}/metrics")
    exported: set[str] = set()
    for family in text_string_to_metric_families(page.text):
        if family.type == "counter":
            exported.add(f"{family.name}_total")
        elif family.type == "histogram":
            exported.update(family.name + suffix for suffix in HISTOGRAM_SERIES)
        else:
            exported.add(family.name)
    for path in WATCHED:
        named = set(METRIC.findall(path.read_text()))
        assert named, f"{path.name} names no metric: the pattern is wrong"
        assert named <= exported, f"{path.name} names metrics the worker does not export"
    # The alerts need the token-fetch counter.
    assert "itwin_worker_token_fetches_total" in exported


async def test_metrics_count_what_happened(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    async with Producer(amqp_url, "itwin.commands") as producer, asyncio.timeout(20):
        for _ in range(3):
            await producer.request("workspace.create", body({"name": "w"}))
        await producer.request("workspace.create", b"not json")
        await producer.request("workspace.get", body({"workspaceId": str(uuid.uuid4())}))
        await producer.request("no.such.command", body({}))
    async with httpx.AsyncClient() as client:
        page = await client.get(f"http://127.0.0.1:{worker.probes.port}/metrics")
    values = samples(page.text)

    def value(name: str, **labels: str) -> float:
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("itwin_worker_commands_received_total", routing_key="workspace.create") == 4
    assert value("itwin_worker_commands_received_total", routing_key="unknown") == 1
    finished = "itwin_worker_commands_finished_total"
    assert value(finished, routing_key="workspace.create", outcome="success", error_code="") == 3
    assert (
        value(finished, routing_key="workspace.create", outcome="failure",
              error_code="InvalidCommand") == 1
    )  # fmt: skip
    assert (
        value(finished, routing_key="workspace.get", outcome="failure",
              error_code="WorkspaceNotFound") == 1
    )  # fmt: skip
    assert value("itwin_worker_dead_letters_total", error_code="InvalidCommand") == 1
    assert value("itwin_worker_dead_letters_total", error_code="UnknownCommand") == 1
    assert value("itwin_worker_dead_letters_total", error_code="WorkspaceNotFound") == 0
    latency = "itwin_worker_api_request_duration_seconds_count"
    assert value(latency, method="POST", endpoint="/contextcapture/workspaces", status="201") == 3
    assert (
        value(latency, method="GET", endpoint="/contextcapture/workspaces/{workspaceId}",
              status="404") == 1
    )  # fmt: skip
    assert value("itwin_worker_limiter_wait_seconds_count") == 4
    assert value("itwin_worker_commands_in_flight") == 0


async def test_a_commands_log_line_has_its_ids_and_outcome_and_no_secret(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers
) -> None:
    [worker] = await spawn_workers(1)
    command_id = str(uuid.uuid4())
    async with Producer(amqp_url, "itwin.commands") as producer:
        await producer.publish(
            "workspace.create", body({"name": "w"}), message_id=command_id, correlation_id="c-7"
        )
        async with asyncio.timeout(20):
            await producer.event_for(command_id)
    worker.stop()
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("command_id") == command_id]
    [finished] = [line for line in mine if line["event"] == "command finished"]
    assert finished["correlation_id"] == "c-7"
    assert finished["routing_key"] == "workspace.create"
    assert (finished["outcome"], finished["api_status"], finished["attempts"]) == (
        "success",
        201,
        1,
    )
    assert finished["duration_ms"] > 0
    assert finished["level"] == "info"
    assert sim.client_secret not in worker.log()
