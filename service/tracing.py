"""OpenTelemetry tracing: the SDK set up from the standard `OTEL_*` variables, and the spans.

The broker side is a FastStream middleware of ours (`MessageTracing`): a consumer span per
delivery continuing the command's `traceparent`, a producer span per `broker.publish` whose
context the message carries. Its attributes name no id (FastStream's own Rabbit attributes
record the message id, the correlation id, the delivery tag and raw routing keys: a `reply_to`
queue name, a hostile routing key on the unrouted queue).

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

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

from faststream import BaseMiddleware, ContextRepo
from faststream.message import StreamMessage
from faststream.rabbit.response import RabbitPublishCommand
from faststream.types import AsyncFuncAny, BrokerMiddleware
from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from structlog.typing import EventDict, WrappedLogger

from service.settings import Settings

INSTRUMENTATION = "itwin_worker"
MESSAGING_SYSTEM = "rabbitmq"
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

    def middleware(self, names: Iterable[str]) -> BrokerMiddleware[Any, RabbitPublishCommand]:
        """The broker middleware: `MessageTracing` with this tracing, destinations outside
        `names` being `other` in span names and attributes."""
        return partial(MessageTracing, tracing=self, names=BrokerNames(frozenset(names)))

    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, str | int] | None = None,
        links: Sequence[Link] | None = None,
    ) -> SpanScope | CurrentSpan:
        """A child of the current span, current while the `with` block runs; with no SDK, the
        current (non-recording) span itself, so the context propagated stays the incoming one
        and nothing is spent.

        An exception marks the span an error with the exception's type only: neither its
        message nor the exception is recorded (it may quote the API's answer, which can name
        ids); callers set `error.type`.
        """
        if not self.recording:
            return CURRENT_SPAN
        return SpanScope(
            self.tracer.start_span(name, kind=kind, attributes=attributes, links=links)
        )

    def shutdown(self) -> None:
        """Export what is buffered (blocks up to the exporter's timeout)."""
        if isinstance(self.provider, TracerProvider):
            self.provider.shutdown()


class SpanScope:
    """A started span made current until the block ends, then ended: what the SDK's
    `start_as_current_span` does, without its three generator-based context managers (about
    8 µs of the 32 µs a span cost in a microbenchmark, for four spans per command)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        self.token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        context.detach(self.token)
        if kind is not None:
            self.span.set_status(StatusCode.ERROR, kind.__name__)
        self.span.end()


class CurrentSpan:
    """With no SDK: the current span as it is (the incoming context's, or an invalid one)."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return trace.get_current_span()

    def __exit__(self, *_: object) -> None:
        return None


CURRENT_SPAN = CurrentSpan()


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


def drop_untyped_trace_headers(headers: dict[str, Any]) -> None:
    """Trace headers that are not text are ignored like invalid ones: AMQP headers are typed,
    a producer can send `traceparent` as a number, bytes or a table, and OpenTelemetry's
    propagators raise on anything but text, which would crash every delivery of that command
    before the pipeline saw it."""
    for name in TRACE_HEADERS:
        if name in headers and not isinstance(headers[name], str):
            # The same mapping as the delivery's: its republished copies drop it too.
            del headers[name]


class MessageTracing(BaseMiddleware[RabbitPublishCommand, Any]):
    """Per message: the command's trace context (and baggage) is the current one while it is
    handled, under a consumer span `<exchange>.<routing key> process`; each publish goes out
    under a producer span `<exchange>.<routing key> publish` whose context it carries. With no
    SDK, only the context: no span, no name or attribute built.

    Ours rather than FastStream's `TelemetryMiddleware`: that one built a `create` span beside
    each publish (and each command without a `traceparent`), metric instruments and context
    scopes per message, costing 0.4-0.6 CPU-ms per command at the top tier's budget even with
    `always_off` sampling, where this one costs 0.03 (bench/README.md). Exceptions are
    not recorded on them (`Tracing.span`), and no id is an attribute (`BrokerNames`).
    """

    __slots__ = ("names", "tracing")

    def __init__(
        self, msg: Any, /, *, context: ContextRepo, tracing: Tracing, names: BrokerNames
    ) -> None:
        super().__init__(msg, context=context)
        self.tracing = tracing
        self.names = names

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        drop_untyped_trace_headers(msg.headers)
        token = context.attach(propagate.extract(msg.headers))
        try:
            if not self.tracing.recording:
                return await call_next(msg)
            name, attributes = self.names.consumed(msg)
            with self.tracing.span(name, kind=SpanKind.CONSUMER, attributes=attributes):
                return await call_next(msg)
        finally:
            context.detach(token)

    async def publish_scope(
        self, call_next: Callable[[RabbitPublishCommand], Awaitable[Any]], cmd: RabbitPublishCommand
    ) -> Any:
        if not self.tracing.recording:
            propagate.inject(cmd.headers)
            return await call_next(cmd)
        name, attributes = self.names.published(cmd)
        with self.tracing.span(name, kind=SpanKind.PRODUCER, attributes=attributes):
            propagate.inject(cmd.headers)
            return await call_next(cmd)


class BrokerNames:
    """Span names and attributes of the broker side (OpenTelemetry's messaging conventions for
    RabbitMQ) without ids: no message id, correlation id or delivery tag, and exchange and
    routing key only when they are the worker's own names, else `other` (a `reply_to` queue, a
    hostile routing key on the unrouted queue)."""

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names

    def bounded(self, name: str | None) -> str:
        return name if name and name in self._names else OTHER

    def consumed(self, msg: StreamMessage[Any]) -> tuple[str, dict[str, str | int]]:
        raw = msg.raw_message
        exchange, key = self.bounded(raw.exchange or "default"), self.bounded(raw.routing_key)
        return f"{exchange}.{key} process", {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation": "process",
            "messaging.rabbitmq.destination.routing_key": key,
            "messaging.destination_publish.name": self.bounded(raw.exchange),
            "messaging.message.body.size": len(msg.body),
        }

    def published(self, cmd: RabbitPublishCommand) -> tuple[str, dict[str, str | int]]:
        exchange = self.bounded(cmd.exchange.name or "default")
        key = self.bounded(cmd.destination)
        return f"{exchange}.{key} publish", {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation": "publish",
            "messaging.destination.name": exchange,
            "messaging.rabbitmq.destination.routing_key": key,
        }
