"""OpenTelemetry tracing: the SDK set up from the standard `OTEL_*` variables, and the spans.

The broker side is FastStream's `TelemetryMiddleware` (a consumer span per delivery, from
delivery to ack, continuing the command's `traceparent`; the trace context injected into every
`broker.publish`), with attributes of our own: FastStream's Rabbit defaults record the message
id, the correlation id, the delivery tag and raw routing keys (a `reply_to` queue name, a
hostile routing key on the unrouted queue), and no id may be an attribute here.

The API side is our own span around each attempt rather than opentelemetry-instrumentation-httpx:
that one records `url.full` (which holds job, workspace and iTwin ids) and captures request
headers whenever `OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST` says so (which
could put the bearer token in a span); ours carries the route template only.

Without an exporter (no `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `OTEL_TRACES_EXPORTER=none` or
`OTEL_SDK_DISABLED=true`) there is no SDK at all: the API's no-op tracer. The context is still
propagated: an incoming `traceparent` goes on to the API requests and the events unchanged (the
worker has no spans of its own to put there); without one, none is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from faststream import BaseMiddleware
from faststream.message import StreamMessage
from faststream.opentelemetry import TelemetryMiddleware
from faststream.rabbit.opentelemetry.provider import RabbitTelemetrySettingsProvider
from faststream.rabbit.response import RabbitPublishCommand
from faststream.types import AsyncFuncAny
from opentelemetry import context, metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from structlog.typing import EventDict, WrappedLogger

from service.settings import Settings

INSTRUMENTATION = "itwin_worker"
OTHER = "other"
"""What a destination outside the worker's own names is called in span names and attributes."""

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
"""W3C Trace Context and Baggage: the headers a command may carry (contract.md)."""

_TRACE_CONTEXT = TraceContextTextMapPropagator()


def exporter_endpoint(settings: Settings) -> str | None:
    """The OTLP/HTTP traces URL, or None when no exporter is configured (then no SDK runs)."""
    if settings.otel_sdk_disabled or settings.otel_traces_exporter == "none":
        return None
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        # The spec: a signal's path is appended to the base endpoint.
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    return None


class Tracing:
    """The worker's tracer provider: the SDK with an OTLP/HTTP exporter, or the no-op one."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.provider = provider or trace.NoOpTracerProvider()
        self.recording = isinstance(self.provider, TracerProvider)
        self.tracer: Tracer = self.provider.get_tracer(INSTRUMENTATION)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        endpoint = exporter_endpoint(settings)
        if endpoint is None:
            return cls()
        # The SDK reads the rest itself: OTEL_TRACES_SAMPLER[_ARG], OTEL_RESOURCE_ATTRIBUTES,
        # OTEL_EXPORTER_OTLP_[TRACES_]HEADERS / TIMEOUT / COMPRESSION / CERTIFICATE, OTEL_BSP_*.
        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: settings.otel_service_name})
        )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        return cls(provider)

    def middlewares(
        self, names: Iterable[str]
    ) -> (
        tuple[type[TraceHeaderGuard], TelemetryMiddleware[RabbitPublishCommand]]
        | tuple[type[PropagationOnly]]
    ):
        """The broker middlewares, outermost first: the guard and FastStream's telemetry
        middleware (destinations outside `names` being `other`); with no SDK, one
        `PropagationOnly`, each FastStream middleware costing its share per message."""
        if not self.recording:
            return (PropagationOnly,)
        attributes = BoundedRabbitAttributes(frozenset(names))
        telemetry = TelemetryMiddleware[RabbitPublishCommand](
            settings_provider_factory=lambda _: attributes,
            tracer_provider=self.provider,
            # Metrics are Prometheus's (service.metrics); no OpenTelemetry meter runs.
            meter_provider=metrics.NoOpMeterProvider(),
        )
        return TraceHeaderGuard, telemetry

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, str | int] | None = None,
        links: Iterable[Link] = (),
    ) -> Iterator[Span]:
        """A child of the current span; with no SDK, the current (non-recording) span itself,
        so the context propagated stays the incoming one and nothing is spent.

        Exceptions are not recorded on the span (their messages may quote the API's answer,
        which can name ids); callers set `error.type` instead.
        """
        if not self.recording:
            yield trace.get_current_span()
            return
        with self.tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=attributes,
            links=list(links),
            record_exception=False,
            set_status_on_exception=True,
        ) as span:
            yield span

    def shutdown(self) -> None:
        """Export what is buffered (blocks up to the exporter's timeout)."""
        if isinstance(self.provider, TracerProvider):
            self.provider.shutdown()


def http_attributes(
    method: str, route: str, *, scheme: str, host: str, port: int | None, attempt: int
) -> dict[str, str | int]:
    """HTTP client semantic conventions with a bounded value set: the route template, never
    the path (which holds ids), no query, no header, no body."""
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "http.route": route,
        "url.scheme": scheme,
        "server.address": host,
        "http.request.resend_count": attempt - 1,
        "itwin.attempt": attempt,
    }
    if port is not None:
        attributes["server.port"] = port
    return attributes


def carrier() -> dict[str, str]:
    """The current trace context as `traceparent` (and `tracestate`): to store with a job's
    polls, which link back to the command that started the following."""
    headers: dict[str, str] = {}
    _TRACE_CONTEXT.inject(headers)
    return headers


def link_to(headers: Mapping[str, str]) -> list[Link]:
    """A link to the span `headers` name; none when they name no valid one."""
    context = trace.get_current_span(_TRACE_CONTEXT.extract(dict(headers), Context()))
    span_context = context.get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


def add_trace_ids(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: `trace_id` and `span_id` of the active span, when there is one."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = trace.format_trace_id(span_context.trace_id)
        event_dict["span_id"] = trace.format_span_id(span_context.span_id)
    return event_dict


class TraceHeaderGuard(BaseMiddleware):
    """Drops trace headers that are not strings before the telemetry middleware reads them.

    AMQP headers are typed: a producer can send `traceparent` as a number, bytes or a table,
    and OpenTelemetry's propagators raise on anything but text, which would crash every
    delivery of that command before the pipeline saw it. Such a header is ignored like any
    invalid one (a new trace). It has to be outside the telemetry middleware: registered first.
    """

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        drop_untyped_trace_headers(msg.headers)
        return await call_next(msg)


def drop_untyped_trace_headers(headers: dict[str, Any]) -> None:
    """Trace headers that are not text are ignored like invalid ones (`TraceHeaderGuard`)."""
    for name in TRACE_HEADERS:
        if name in headers and not isinstance(headers[name], str):
            # The same mapping as the delivery's: its republished copies drop it too.
            del headers[name]


class PropagationOnly(BaseMiddleware[RabbitPublishCommand]):
    """Without an SDK: the incoming trace context (and baggage) is the current one while the
    message is handled, and every publish carries it. That is what FastStream's telemetry
    middleware does with a no-op tracer, without its per-message spans, meters and scopes."""

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        drop_untyped_trace_headers(msg.headers)
        token = context.attach(propagate.extract(msg.headers))
        try:
            return await call_next(msg)
        finally:
            context.detach(token)

    async def publish_scope(
        self, call_next: Callable[[RabbitPublishCommand], Awaitable[Any]], cmd: RabbitPublishCommand
    ) -> Any:
        propagate.inject(cmd.headers)
        return await call_next(cmd)


class BoundedRabbitAttributes(RabbitTelemetrySettingsProvider):
    """FastStream's Rabbit span attributes without ids: no message id, correlation id or
    delivery tag, and exchange and routing key only when they are the worker's own names."""

    def __init__(self, names: frozenset[str]) -> None:
        super().__init__()
        self._names = names

    def bounded(self, name: str | None) -> str:
        return name if name and name in self._names else OTHER

    def get_consume_attrs_from_message(self, msg: StreamMessage[Any]) -> dict[str, Any]:
        raw = msg.raw_message
        return {
            "messaging.system": self.messaging_system,
            "messaging.rabbitmq.destination.routing_key": self.bounded(raw.routing_key),
            "messaging.destination_publish.name": self.bounded(raw.exchange),
            "messaging.message.body.size": len(msg.body),
        }

    def get_consume_destination_name(self, msg: StreamMessage[Any]) -> str:
        raw = msg.raw_message
        exchange = raw.exchange or "default"
        return f"{self.bounded(exchange)}.{self.bounded(raw.routing_key)}"

    def get_publish_attrs_from_cmd(self, cmd: RabbitPublishCommand) -> dict[str, Any]:
        return {
            "messaging.system": self.messaging_system,
            "messaging.destination.name": self.bounded(cmd.exchange.name or "default"),
            "messaging.rabbitmq.destination.routing_key": self.bounded(cmd.destination),
        }

    def get_publish_destination_name(self, cmd: RabbitPublishCommand) -> str:
        exchange = cmd.exchange.name or "default"
        return f"{self.bounded(exchange)}.{self.bounded(cmd.destination)}"
