"""Issue 3 acceptance: every command through a real RabbitMQ to the simulator over a socket."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from service.producer import Producer
from service.simulator import (
    FORBIDDEN_ITWIN_ID,
    KNOWN_ITWIN_IDS,
    NO_CLUSTER_ITWIN_ID,
    SimulatorHandle,
)
from tests.support import ITWIN, StartWorker, api_failure, drain_queue, request

assert ITWIN in KNOWN_ITWIN_IDS
TIMEOUT = 20


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


class EventTap:
    """A queue bound to every event on `itwin.events`, with the AMQP properties kept."""

    def __init__(self, amqp_url: str) -> None:
        self._url = amqp_url
        self.messages: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

    async def __aenter__(self) -> EventTap:
        self._connection = await aio_pika.connect(self._url)
        channel = await self._connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind("itwin.events", routing_key="#")
        await queue.consume(self.messages.put, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._connection.close()

    async def for_command(self, command_id: str) -> aio_pika.abc.AbstractIncomingMessage:
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = await self.messages.get()
                if json.loads(message.body)["commandId"] == command_id:
                    return message


@pytest.fixture
async def tap(amqp_url: str, producer: Producer) -> AsyncIterator[EventTap]:
    async with EventTap(amqp_url) as events:
        yield events


async def create_workspace(producer: Producer) -> dict[str, Any]:
    event = await request(producer, "workspace.create", {"name": "w", "iTwinId": ITWIN})
    assert event["type"] == "workspace.created", event
    return event["result"]  # type: ignore[no-any-return]


def job_body(workspace_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "type": "Full",
        "name": "job",
        "workspaceId": workspace_id,
        "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4", "description": "images"}],
        "settings": {"quality": "Draft", "processingEngines": 2, "outputs": ["OBJ"]},
        **changes,
    }


def api_requests(sim: SimulatorHandle) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in sim.requests(kind="api")]


async def test_workspace_create_event_has_the_contract_shape_and_properties(
    sim: SimulatorHandle, producer: Producer, tap: EventTap
) -> None:
    command_id = str(uuid.uuid4())
    await producer.publish(
        "workspace.create",
        body({"name": "Workspace test", "iTwinId": ITWIN}),
        message_id=command_id,
        correlation_id="corr-42",
    )
    async with asyncio.timeout(TIMEOUT):
        reply = await producer.event_for(command_id)
    published = await tap.for_command(command_id)
    event = json.loads(published.body)

    assert event == reply, "reply_to receives the same event"
    assert set(event) == {
        "eventId", "type", "commandId", "correlationId", "occurredAt", "attempts", "result",
    }  # fmt: skip
    assert event["type"] == "workspace.created"
    assert (event["commandId"], event["correlationId"], event["attempts"]) == (
        command_id, "corr-42", 1,
    )  # fmt: skip
    assert event["occurredAt"].endswith("Z")
    workspace = event["result"]
    assert (workspace["name"], workspace["iTwinId"]) == ("Workspace test", ITWIN)
    assert set(workspace) == {"id", "createdDateTime", "name", "iTwinId", "contextCaptureVersion"}

    assert published.routing_key == "workspace.created"
    assert published.type == "workspace.created"
    assert published.message_id == event["eventId"]
    assert published.correlation_id == "corr-42"
    assert published.content_type == "application/json"
    assert published.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert api_requests(sim) == [("POST", "/contextcapture/workspaces")]


async def test_correlation_id_defaults_to_the_command_id(producer: Producer) -> None:
    event = await request(producer, "workspace.create", {"name": "w"})
    assert event["correlationId"] == event["commandId"]
    assert "iTwinId" not in event["result"]


async def test_workspace_get_returns_what_create_made(producer: Producer) -> None:
    workspace = await create_workspace(producer)
    event = await request(producer, "workspace.get", {"workspaceId": workspace["id"]})
    assert event["type"] == "workspace.retrieved"
    assert event["result"] == workspace


async def test_job_create_on_an_existing_workspace(
    producer: Producer, sim: SimulatorHandle
) -> None:
    workspace = await create_workspace(producer)
    event = await request(producer, "job.create", job_body(workspace["id"]))
    assert event["type"] == "job.created", event
    job = event["result"]
    assert (job["state"], job["workspaceId"], job["type"]) == (
        "unsubmitted",
        workspace["id"],
        "Full",
    )
    assert [output["format"] for output in job["jobSettings"]["outputs"]] == ["OBJ"]


async def test_repository_create(producer: Producer) -> None:
    document = {
        "iTwinId": ITWIN,
        "class": "GeographicInformationSystem",
        "subClass": "WebMapService",
        "uri": f"https://maps.example.com/{uuid.uuid4()}",
    }
    event = await request(producer, "repository.create", document)
    assert event["type"] == "repository.created", event
    assert {k: event["result"][k] for k in ("class", "subClass", "uri")} == {
        k: document[k] for k in ("class", "subClass", "uri")
    }


async def test_application_create(producer: Producer) -> None:
    event = await request(
        producer, "application.create", {"displayName": "Revit", "version": "2019"}
    )
    assert event["type"] == "application.created"
    assert (event["result"]["displayName"], event["result"]["version"]) == ("Revit", "2019")


# --- the pages' error responses reach the producer unchanged -------------------------------


async def test_workspace_create_422_no_processing_cluster(
    amqp_url: str, producer: Producer
) -> None:
    error = await api_failure(
        producer, "workspace.create", {"name": "w", "iTwinId": NO_CLUSTER_ITWIN_ID},
        422, "InvalidContextCaptureRequest",
        [{"code": "InvalidParameter", "message": "No processing cluster in project location.",
          "target": None}],
    )  # fmt: skip
    assert error["message"] == "Cannot create workspace."


async def test_workspace_get_404(amqp_url: str, producer: Producer) -> None:
    error = await api_failure(
        producer, "workspace.get", {"workspaceId": str(uuid.uuid4())},
        404, "WorkspaceNotFound", [],
    )  # fmt: skip
    assert error["message"] == "Requested workspace is not available."


async def test_job_create_422_unknown_workspace_names_the_target(
    amqp_url: str, producer: Producer
) -> None:
    await api_failure(
        producer, "job.create", job_body(str(uuid.uuid4())),
        422, "InvalidContextCaptureRequest",
        [{"code": "InvalidParameter", "message": "Invalid 'workspaceId' parameter.",
          "target": "workspaceId"}],
    )  # fmt: skip


async def test_repository_404_403_409_422(amqp_url: str, producer: Producer) -> None:
    base = {"class": "Construction", "subClass": "Performance", "uri": "https://p.example.com"}
    await api_failure(
        producer, "repository.create", {**base, "iTwinId": str(uuid.uuid4())},
        404, "iTwinNotFound",
    )  # fmt: skip
    await api_failure(
        producer, "repository.create", {**base, "iTwinId": FORBIDDEN_ITWIN_ID},
        403, "InsufficientPermissions",
    )  # fmt: skip
    first = await request(producer, "repository.create", {**base, "iTwinId": ITWIN})
    assert first["type"] == "repository.created"
    await api_failure(
        producer, "repository.create", {**base, "iTwinId": ITWIN},
        409, "iTwinRepositoryExists",
    )  # fmt: skip
    await api_failure(
        producer, "repository.create",
        {**base, "iTwinId": ITWIN, "class": "RealityData", "subClass": "WebMapService"},
        422, "InvalidiTwinsRequest",
        [{"code": "InvalidValue", "message": "Class value is incorrect.", "target": "class"}],
    )  # fmt: skip


async def test_application_409_and_403(
    amqp_url: str, producer: Producer, sim: SimulatorHandle
) -> None:
    document = {"displayName": "MicroStation", "version": "2024"}
    assert (await request(producer, "application.create", document))["type"] == (
        "application.created"
    )
    await api_failure(producer, "application.create", document, 409, "ApplicationExists")
    sim.configure(library_forbidden=True)
    await api_failure(
        producer, "application.create", {**document, "version": "2025"},
        403, "InsufficientPermissions",
    )  # fmt: skip


async def test_api_refusals_are_not_dead_lettered(amqp_url: str, producer: Producer) -> None:
    event = await request(producer, "workspace.get", {"workspaceId": str(uuid.uuid4())})
    assert event["error"]["code"] == "WorkspaceNotFound"
    dead = await drain_queue(amqp_url, "itwin-worker.dlq", quiet=0.5)
    assert event["commandId"] not in {m.message_id for m in dead}


# --- invalid and unknown commands -------------------------------------------------------------


@pytest.mark.parametrize(
    ("routing_key", "raw", "target"),
    [
        ("workspace.create", b"this is not json", None),
        ("job.create", body({"type": "Full", "name": "n", "workspaceId": "w", "settings": {}}),
         "inputs"),
        ("job.create", body(job_body("w", type="Fast")), "type"),
        ("application.create", body({"displayName": "Re>vit", "version": "1"}), "displayName"),
        ("application.create", body({"displayName": "x" * 251, "version": "1"}), "displayName"),
        ("workspace.get", body({"workspaceId": "../../library/applications"}), "workspaceId"),
    ],
)  # fmt: skip
async def test_invalid_command_is_answered_dead_lettered_and_never_sent(
    amqp_url: str,
    producer: Producer,
    sim: SimulatorHandle,
    routing_key: str,
    raw: bytes,
    target: str | None,
) -> None:
    command_id = await producer.publish(routing_key, raw, correlation_id="c-invalid")
    async with asyncio.timeout(TIMEOUT):
        event = await producer.event_for(command_id)
    error = event["error"]
    assert event["type"] == f"{routing_key}.failed"
    assert (error["status"], error["code"], error["retriable"]) == (None, "InvalidCommand", False)
    assert target in [detail["target"] for detail in error["details"]]
    assert event["attempts"] == 0
    assert sim.requests(kind="api") == []
    assert sim.requests(kind="token") == [], "an invalid command costs no token either"

    dead = [
        m for m in await drain_queue(amqp_url, "itwin-worker.dlq") if m.message_id == command_id
    ]
    assert len(dead) == 1
    assert dead[0].body == raw
    assert dead[0].correlation_id == "c-invalid"
    assert dead[0].headers["x-itwin-error-code"] == "InvalidCommand"
    assert dead[0].headers["x-itwin-routing-key"] == routing_key


async def test_unknown_routing_key_gets_unknown_command(
    amqp_url: str, producer: Producer, sim: SimulatorHandle
) -> None:
    command_id = await producer.publish("workspace.rename", body({"workspaceId": "x"}))
    async with asyncio.timeout(TIMEOUT):
        event = await producer.event_for(command_id)
    assert event["type"] == "workspace.rename.failed"
    assert (event["error"]["code"], event["error"]["status"]) == ("UnknownCommand", None)
    assert sim.requests(kind="api") == []
    dead = [
        m for m in await drain_queue(amqp_url, "itwin-worker.dlq") if m.message_id == command_id
    ]
    assert dead[0].headers["x-itwin-error-code"] == "UnknownCommand"
    assert dead[0].headers["x-itwin-routing-key"] == "workspace.rename"


# --- tokens -----------------------------------------------------------------------------------


async def test_expired_token_is_refreshed_and_the_command_succeeds(
    producer: Producer, sim: SimulatorHandle
) -> None:
    await create_workspace(producer)
    assert len(sim.requests(kind="token")) == 1
    sim.expire_tokens()
    event = await request(producer, "workspace.create", {"name": "after expiry"})
    assert event["type"] == "workspace.created"
    assert event["attempts"] == 2, "one rejected attempt, one with the new token"
    assert len(sim.requests(kind="token")) == 2
    statuses = [r.status for r in sim.requests(kind="api")]
    assert statuses == [201, 401, 201]


async def test_one_token_fetch_is_shared_by_concurrent_commands(
    producer: Producer, sim: SimulatorHandle
) -> None:
    ids = [await producer.publish("workspace.create", body({"name": f"w{i}"})) for i in range(20)]
    async with asyncio.timeout(TIMEOUT):
        events = [await producer.event_for(command_id) for command_id in ids]
    assert {e["type"] for e in events} == {"workspace.created"}
    assert len(sim.requests(kind="token")) == 1


async def test_unknown_client_gives_unauthorized_and_dead_letters(
    amqp_url: str, start_worker: StartWorker, sim: SimulatorHandle
) -> None:
    await start_worker(client_secret="wrong-secret")
    async with Producer(amqp_url, "itwin.commands") as client:
        command_id = await client.publish("workspace.create", body({"name": "w"}))
        async with asyncio.timeout(TIMEOUT):
            event = await client.event_for(command_id)
    error = event["error"]
    assert (error["code"], error["status"]) == ("Unauthorized", None)
    assert "wrong-secret" not in json.dumps(event)
    assert sim.requests(kind="api") == []
    dead = await drain_queue(amqp_url, "itwin-worker.dlq")
    assert command_id in {m.message_id for m in dead}
