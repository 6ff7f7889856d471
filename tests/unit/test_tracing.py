"""Span attributes are bounded (route templates, the worker's own names), with no I/O: the
API client on httpx's `MockTransport`, spans kept by the SDK's in-memory exporter."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from faststream.rabbit import RabbitExchange
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import SecretStr

from service.api import ApiClient, RetryPolicy
from service.auth import ClientCredentials, TokenProvider
from service.commands import JOB_PATH, ApiRequest
from service.errors import RetriesExhausted
from service.limiter import LocalLimiter, buckets_for
from service.metrics import Metrics
from service.settings import Settings
from service.tracing import (
    OTHER,
    BrokerNames,
    Tracing,
    add_trace_ids,
    carrier,
    exporter_endpoint,
    link_to,
)

JOB_ID = "5f2a1c1e-0000-4000-8000-00000000abcd"
SECRET = "client-secret-value"


def recording() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def api_client(tracing: Tracing, handler: Any) -> ApiClient:
    def identity(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "the-token", "expires_in": 3600})

    tokens = TokenProvider(
        httpx.AsyncClient(transport=httpx.MockTransport(identity)),
        ClientCredentials("https://ims.example/token", "id", SecretStr(SECRET), "scope"),
        tracing=tracing,
    )
    return ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        tokens,
        LocalLimiter(buckets_for(1000.0, 10)),
        RetryPolicy(attempts=2, initial=0.0001, maximum=0.0001),
        base_url="https://api.example",
        metrics=Metrics(frozenset()),
        tracing=tracing,
    )


async def test_each_attempt_is_a_span_with_the_route_template_never_the_path() -> None:
    tracing, exporter = recording()
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503)

    request = ApiRequest("GET", JOB_PATH.format(jobId=JOB_ID), None, JOB_PATH)
    with (
        tracing.tracer.start_as_current_span("command") as command,
        pytest.raises(RetriesExhausted),
    ):
        await api_client(tracing, api).send(request)
    spans = exporter.get_finished_spans()
    attempts = [s for s in spans if s.kind is trace.SpanKind.CLIENT]
    assert [s.name for s in attempts] == [f"GET {JOB_PATH}"] * 2
    assert [dict(s.attributes or {}) for s in attempts] == [
        {
            "http.request.method": "GET",
            "http.route": JOB_PATH,
            "url.scheme": "https",
            "server.address": "api.example",
            "http.request.resend_count": n,
            "itwin.attempt": n + 1,
            "http.response.status_code": 503,
            "error.type": "503",
        }
        for n in range(2)
    ]
    # Each request carries the trace context of its own attempt's span.
    for sent, span in zip(seen, attempts, strict=True):
        assert span.context is not None
        assert span.parent is not None
        assert span.parent.span_id == command.get_span_context().span_id
        _version, trace_id, span_id, _ = sent.headers["traceparent"].split("-")
        assert (int(trace_id, 16), int(span_id, 16)) == (
            span.context.trace_id,
            span.context.span_id,
        )
    names = {s.name for s in spans}
    assert {"budget wait", "token fetch", "command"} <= names
    every = [str(v) for s in spans for v in (s.attributes or {}).values()]
    assert not [v for v in every if JOB_ID in v or SECRET in v or "the-token" in v]
    # Nothing recorded an exception message (it could quote the API's answer).
    assert not [event for s in spans for event in s.events]


def message(exchange: str, routing_key: str) -> Any:
    raw = SimpleNamespace(exchange=exchange, routing_key=routing_key, delivery_tag=7)
    return SimpleNamespace(
        raw_message=raw, body=b"{}", message_id="m-1", correlation_id="c-1", headers={}
    )


def test_broker_spans_name_only_the_worker_s_own_destinations() -> None:
    names = BrokerNames(frozenset({"itwin.commands", "workspace.create"}))
    consumed = names.consumed(message("itwin.commands", "workspace.create"))
    assert consumed == (
        "itwin.commands.workspace.create process",
        {
            "messaging.system": "rabbitmq",
            "messaging.operation": "process",
            "messaging.rabbitmq.destination.routing_key": "workspace.create",
            "messaging.destination_publish.name": "itwin.commands",
            "messaging.message.body.size": 2,
        },
    )
    name, attributes = names.consumed(message("itwin.commands", "job.7f3e0c.secret"))
    assert name == f"itwin.commands.{OTHER} process"
    assert attributes["messaging.rabbitmq.destination.routing_key"] == OTHER
    reply = SimpleNamespace(
        exchange=RabbitExchange(""), destination="amq.rabbitmq.reply-to.g1h2AA", correlation_id="c"
    )
    assert names.published(reply) == (  # type: ignore[arg-type]
        f"{OTHER}.{OTHER} publish",
        {
            "messaging.system": "rabbitmq",
            "messaging.operation": "publish",
            "messaging.destination.name": OTHER,
            "messaging.rabbitmq.destination.routing_key": OTHER,
        },
    )


@pytest.mark.parametrize(
    ("variables", "endpoint"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/x"}, "http://c:4318/x"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
    ],
)
def test_an_exporter_runs_only_when_an_endpoint_is_configured(
    variables: dict[str, str], endpoint: str | None
) -> None:
    settings = Settings(**variables)  # type: ignore[arg-type]
    assert exporter_endpoint(settings) == endpoint
    assert Tracing.from_settings(settings).recording is (endpoint is not None)


def test_log_lines_carry_the_active_span_s_ids_and_polls_link_to_it() -> None:
    tracing, _ = recording()
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with tracing.tracer.start_as_current_span("command") as span:
        context = span.get_span_context()
        line = add_trace_ids(None, "info", {"event": "x"})
        stored = carrier()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"
    (link,) = link_to(stored)
    assert link.context.span_id == context.span_id
    assert link_to({"traceparent": "00-garbage-01"}) == []


def test_a_failed_span_names_the_exception_s_type_not_its_message() -> None:
    tracing, exporter = recording()
    with pytest.raises(ValueError, match="no job"), tracing.span("work"):
        raise ValueError(f"the API said: no job {JOB_ID}")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError"
    assert not span.events
    # The span was current inside the block only.
    assert not trace.get_current_span().get_span_context().is_valid
