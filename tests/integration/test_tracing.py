"""Issue 20 acceptance: a command's trace goes on through the worker to the API and the events,
and the worker's spans reach an OTLP/HTTP receiver with the right structure and no ids."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from service.app import Worker
from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import StartWorker, drain_queue, free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def body(document: object) -> bytes:
    return json.dumps(document).encode()


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: tuple[str, ...]


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint: decodes each export with the real protobuf messages."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.content_types: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.content_types.add(self.headers["Content-Type"])
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(data)
                receiver.add(request)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.service_names: set[str] = set()
        self._lock = threading.Lock()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.service_names.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=span.kind,
                                attributes={
                                    a.key: getattr(a.value, a.value.WhichOneof("value"))
                                    for a in span.attributes
                                },
                                links=tuple(link.span_id.hex() for link in span.links),
                            )
                        )


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(timeout=5)


@pytest.fixture
async def traced(
    otlp: OtlpReceiver, amqp_url: str, start_worker: StartWorker
) -> AsyncIterator[tuple[Worker, Producer]]:
    # The receiver first: it outlives the worker, whose stop exports what is left.
    worker = await start_worker(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint)
    async with Producer(amqp_url, "itwin.commands") as producer:
        yield worker, producer


def parts(traceparent: str) -> tuple[str, str]:
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00"
    assert len(trace_id) == 32
    assert len(span_id) == 16
    return trace_id, span_id


async def flushed(worker: Worker, otlp: OtlpReceiver) -> list[ReceivedSpan]:
    assert await asyncio.to_thread(worker.tracing.provider.force_flush)  # type: ignore[attr-defined]
    return list(otlp.spans)


async def test_a_command_trace_goes_on_to_the_api_the_event_and_the_exporter(
    amqp_url: str, sim: SimulatorHandle, traced: tuple[Worker, Producer], otlp: OtlpReceiver
) -> None:
    worker, producer = traced
    command_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with asyncio.timeout(20):
        await producer.publish(
            "workspace.create",
            body({"name": "traced"}),
            message_id=command_id,
            correlation_id=correlation_id,
            headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1", "baggage": "k=v"},
        )
        created = await producer.event_for(command_id)
        workspace_id = created["result"]["id"]
        get_id = await producer.publish(
            "workspace.get",
            body({"workspaceId": workspace_id}),
            headers={"traceparent": TRACEPARENT},
        )
        await producer.event_for(get_id)
    spans = await flushed(worker, otlp)

    # The API saw the trace, from a span of the worker's (a new span id).
    api_calls = [r for r in sim.requests() if r.method == "POST"]
    assert api_calls[0].traceparent is not None
    sent_trace, sent_span = parts(api_calls[0].traceparent)
    assert sent_trace == TRACE_ID
    assert sent_span != PARENT_ID
    # The event (here its reply_to copy) carries the trace, from a worker's span too.
    headers = producer.headers[created["eventId"]]
    event_trace, event_span = parts(headers["traceparent"])
    assert event_trace == TRACE_ID
    assert event_span != PARENT_ID
    assert headers["tracestate"] == "vendor=1"

    # Structure: command span (child of the producer's) → budget wait, token, attempt, publish.
    by_id = {span.span_id: span for span in spans}
    assert {span.trace_id for span in spans} == {TRACE_ID}
    assert otlp.service_names == {"itwin-worker"}
    assert otlp.content_types == {"application/x-protobuf"}
    command = next(s for s in spans if s.parent_id == PARENT_ID and "workspace.create" in s.name)
    assert command.name == "itwin.commands.workspace.create process"
    children = {s.name for s in spans if s.parent_id == command.span_id}
    assert {"budget wait", "token fetch", "POST /contextcapture/workspaces"} <= children
    attempt = by_id[sent_span]
    assert attempt.parent_id == command.span_id
    assert attempt.attributes == {
        "http.request.method": "POST",
        "http.route": "/contextcapture/workspaces",
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": attempt.attributes["server.port"],
        "http.request.resend_count": 0,
        "itwin.attempt": 1,
        "http.response.status_code": 201,
    }
    # The event's traceparent is the span that published it, a child of the command's; the
    # reply queue's name is not one of the worker's.
    published = by_id[event_span]
    assert published.parent_id == command.span_id
    assert (published.name, published.kind) == ("default.other publish", Span.SPAN_KIND_PRODUCER)
    assert "itwin.events.workspace.created publish" in children
    get_attempt = next(s for s in spans if s.name.startswith("GET "))
    assert get_attempt.attributes["http.route"] == "/contextcapture/workspaces/{workspaceId}"

    # No id, secret or token anywhere: not the command's ids, the workspace id, the reply
    # queue, the client secret, nor a bearer token.
    values = [str(value) for span in spans for value in span.attributes.values()]
    values += [span.name for span in spans]
    forbidden = [command_id, correlation_id, get_id, workspace_id, sim.client_secret, "Bearer"]
    forbidden += ["amq.rabbitmq.reply-to", "amq.gen-"]
    assert not [(v, f) for v in values for f in forbidden if f in v]


async def test_without_trace_headers_a_trace_starts_and_an_invalid_one_is_ignored(
    sim: SimulatorHandle, traced: tuple[Worker, Producer], otlp: OtlpReceiver
) -> None:
    worker, producer = traced
    events = []
    async with asyncio.timeout(20):
        for headers in ({}, {"traceparent": "00-not-a-trace-context-01"}, {"traceparent": 7}):
            message_id = await producer.publish(
                "workspace.create", body({"name": "w"}), headers=headers
            )
            events.append(await producer.event_for(message_id))
    assert [event["type"] for event in events] == ["workspace.created"] * 3
    trace_ids = [parts(producer.headers[event["eventId"]]["traceparent"])[0] for event in events]
    assert len(set(trace_ids)) == 3
    sent = [parts(r.traceparent)[0] for r in sim.requests() if r.traceparent is not None]
    assert sent == trace_ids
    spans = await flushed(worker, otlp)
    assert {span.trace_id for span in spans} == set(trace_ids)


async def test_a_dead_letter_carries_the_trace(
    amqp_url: str, traced: tuple[Worker, Producer], otlp: OtlpReceiver
) -> None:
    worker, producer = traced
    async with asyncio.timeout(20):
        message_id = await producer.publish(
            "workspace.create", b"not json", headers={"traceparent": TRACEPARENT}
        )
        failed = await producer.event_for(message_id)
    assert failed["error"]["code"] == "InvalidCommand"
    assert parts(producer.headers[failed["eventId"]]["traceparent"])[0] == TRACE_ID
    dead_letters = await drain_queue(amqp_url, worker.topology.dead_letter_queue.name)
    (dead,) = [message for message in dead_letters if message.message_id == message_id]
    trace_id, span_id = parts(dead.headers["traceparent"])
    assert trace_id == TRACE_ID
    assert span_id != PARENT_ID


async def test_without_an_exporter_the_incoming_context_is_passed_on(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    assert not worker.tracing.recording
    async with Producer(amqp_url, "itwin.commands") as producer, asyncio.timeout(20):
        traced_id = await producer.publish(
            "workspace.create", body({"name": "w"}), headers={"traceparent": TRACEPARENT}
        )
        traced = await producer.event_for(traced_id)
        plain = await producer.request("workspace.create", body({"name": "w"}))
        bad_id = await producer.publish(
            "workspace.create", body({"name": "w"}), headers={"traceparent": 7, "baggage": ["x"]}
        )
        bad = await producer.event_for(bad_id)
    assert producer.headers[traced["eventId"]]["traceparent"] == TRACEPARENT
    assert "traceparent" not in producer.headers[plain["eventId"]]
    assert bad["type"] == "workspace.created"
    assert "traceparent" not in producer.headers[bad["eventId"]]
    assert [r.traceparent for r in sim.requests()] == [TRACEPARENT, None, None]


async def test_a_followed_job_polls_in_the_command_trace_linked_to_the_command(
    amqp_url: str, sim: SimulatorHandle, otlp: OtlpReceiver, start_worker: StartWorker
) -> None:
    worker = await start_worker(
        job_poll_schedule=[0.2, 0.4], OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint
    )
    sim.configure(time_scale=0.02)  # the simulated 60 s job takes ~1 s
    async with Producer(amqp_url, "itwin.commands") as producer, asyncio.timeout(30):
        workspace = await producer.request("workspace.create", body({"name": "jobs"}))
        job = await producer.request(
            "job.create",
            body({
                "type": "Full", "name": "j", "workspaceId": workspace["result"]["id"],
                "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"}],
                "settings": {"outputs": ["OBJ"]},
            }),
        )  # fmt: skip
        command_id = await producer.publish(
            "job.submit", body({"jobId": job["result"]["id"]}), headers={"traceparent": TRACEPARENT}
        )
        while not any(
            e["commandId"] == command_id and e["type"] == "job.succeeded" for e in producer.events
        ):
            await asyncio.sleep(0.05)
    events = [e for e in producer.events if e["commandId"] == command_id]
    assert {e["type"] for e in events} >= {"job.submitted", "job.progress", "job.succeeded"}
    for event in events:
        assert parts(producer.headers[event["eventId"]]["traceparent"])[0] == TRACE_ID
    spans = await flushed(worker, otlp)
    command = next(s for s in spans if s.parent_id == PARENT_ID and "job.submit" in s.name)
    polls = [s for s in spans if s.name == "job poll"]
    assert len(polls) >= 2
    assert all(p.trace_id == TRACE_ID and p.links == (command.span_id,) for p in polls)
    values = [str(v) for s in spans for v in s.attributes.values()] + [s.name for s in spans]
    assert not [v for v in values if job["result"]["id"] in v or command_id in v]
