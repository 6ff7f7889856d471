"""The JSON Schema of every command body and every event, generated from the models, and of
the trace headers (W3C Trace Context and Baggage) commands and events may carry.

`service.asyncapi` builds its message payloads on these; `service.contract` writes both to
`schemas/`.
"""

from __future__ import annotations

from typing import Any

from service.commands import (
    COMMANDS,
    NEXT_PAGE_PARAMETER,
    SAFE_ROUTING_KEY,
    UNKNOWN_COMMAND_EVENT,
    CommandSpec,
)
from service.events import BaseEvent, FailureEvent, SuccessEvent
from service.jobs import JOB_EVENT_MODELS, JOB_EVENTS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
UNKNOWN_COMMAND_TYPE_PATTERN = SAFE_ROUTING_KEY.pattern.removesuffix("$") + r"\.failed$"
"""Every UnknownCommand event's type: `command.failed` or `<routing key>.failed`."""


def _event_schema(
    model: type[BaseEvent],
    event_type: str,
    description: str,
    result: dict[str, Any] | None = None,
) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    schema["properties"]["type"] = {"const": event_type, "description": "The event type."}
    if result is not None:
        schema["properties"]["result"] = result
    return {"$schema": DIALECT, **schema, "title": event_type, "description": description}


def result_schema(spec: CommandSpec) -> dict[str, Any] | None:
    """The success event's `result` when it is not the API's inner object (see `ResultShape`)."""
    if spec.result == "object":
        return None
    if spec.result == "ids":
        names: tuple[str, ...] = spec.path_fields
        description = "The ids the command named: what no longer exists."
        properties: dict[str, Any] = {name: {"type": "string"} for name in names}
    elif spec.result == "ids_and_object":
        names = spec.path_fields
        return {
            "type": "object",
            "properties": {name: {"type": "string"} for name in names},
            "required": list(names),
            "description": f"The ids the command named, then the fields of the API's "
            f"`{spec.result_key}` object, unchanged.",
        }
    else:
        names = (spec.result_key,)
        description = f"The API's `{spec.result_key}`, unchanged."
        properties = {spec.result_key: {"type": "array", "items": {"type": "object"}}}
        if spec.result == "page":
            names += (NEXT_PAGE_PARAMETER,)
            description = (
                f"One page of the API's `{spec.result_key}`, unchanged, and the token to send "
                "for the next page (null on the last)."
            )
            properties[NEXT_PAGE_PARAMETER] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    return {
        "type": "object",
        "properties": properties,
        "required": list(names),
        "additionalProperties": False,
        "description": description,
    }


COMMAND_TRACE_HEADERS = "command-trace-headers"
EVENT_TRACE_HEADERS = "event-trace-headers"

_TRACE_HEADERS: dict[str, dict[str, Any]] = {
    "traceparent": {
        "type": "string",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        "description": "W3C Trace Context `traceparent`.",
    },
    "tracestate": {"type": "string", "description": "W3C Trace Context `tracestate`."},
    "baggage": {"type": "string", "description": "W3C Baggage."},
}


def _trace_headers(title: str, description: str, names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "title": title,
        "description": description,
        "type": "object",
        "properties": {name: _TRACE_HEADERS[name] for name in names},
    }


def schemas() -> dict[str, dict[str, Any]]:
    """Relative path → JSON Schema document, for every command and event of the contract."""
    documents: dict[str, dict[str, Any]] = {}
    for spec in COMMANDS:
        schema = spec.model.json_schema()
        documents[f"commands/{spec.routing_key}.json"] = {
            "$schema": DIALECT,
            **schema,
            "title": spec.routing_key,
            "description": f"{spec.model.__doc__}\n\n{spec.method} {spec.path}",
        }
        if spec.success_event is not None:
            documents[f"events/{spec.success_event}.json"] = _event_schema(
                SuccessEvent,
                spec.success_event,
                f"{spec.routing_key} succeeded.",
                result_schema(spec),
            )
        documents[f"events/{spec.failure_event}.json"] = _event_schema(
            FailureEvent, spec.failure_event, f"{spec.routing_key} failed."
        )
    for event_type, description in JOB_EVENTS.items():
        model = JOB_EVENT_MODELS.get(event_type, SuccessEvent)
        documents[f"events/{event_type}.json"] = _event_schema(model, event_type, description)
    unknown = _event_schema(
        FailureEvent,
        UNKNOWN_COMMAND_EVENT,
        "UnknownCommand: `<routing key>.failed` for an unknown routing key of at most 8 "
        "dot-separated words of `[A-Za-z0-9_-]` (at most 64 each), `command.failed` for any "
        "other.",
    )
    unknown["properties"]["type"] = {
        "type": "string",
        "pattern": UNKNOWN_COMMAND_TYPE_PATTERN,
        "description": "`command.failed`, or the unknown routing key + `.failed`.",
    }
    documents[f"events/{UNKNOWN_COMMAND_EVENT}.json"] = unknown
    documents[f"headers/{COMMAND_TRACE_HEADERS}.json"] = _trace_headers(
        "Trace headers of a command",
        "AMQP headers a command may carry, as OpenTelemetry-instrumented producers send them: "
        "the worker continues that trace (an invalid or non-text value is ignored: a new trace "
        "starts, the command is processed as usual). Other headers are allowed.",
        ("traceparent", "tracestate", "baggage"),
    )
    documents[f"headers/{EVENT_TRACE_HEADERS}.json"] = _trace_headers(
        "Trace headers of an event",
        "The worker's span for the command, in the command's trace (a new trace when the "
        "command carried none). Without an exporter configured the worker has no spans: the "
        "command's own `traceparent` is passed on unchanged, and none is set when it had none. "
        "The command's `baggage` is passed on too.",
        ("traceparent", "tracestate", "baggage"),
    )
    return documents
