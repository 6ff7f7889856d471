"""The JSON Schema of every command body and every event, generated from the models.

`service.asyncapi` builds its message payloads on these; `service.contract` writes both to
`schemas/`.
"""

from __future__ import annotations

from typing import Any

from service.commands import COMMANDS, UNKNOWN_COMMAND_EVENT
from service.events import BaseEvent, FailureEvent, SuccessEvent
from service.jobs import JOB_EVENTS

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _event_schema(model: type[BaseEvent], event_type: str, description: str) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    schema["properties"]["type"] = {"const": event_type, "description": "The event type."}
    return {"$schema": DIALECT, **schema, "title": event_type, "description": description}


def schemas() -> dict[str, dict[str, Any]]:
    """Relative path → JSON Schema document, for every command and event of the contract."""
    documents: dict[str, dict[str, Any]] = {}
    for spec in COMMANDS:
        schema = spec.model.model_json_schema(by_alias=True)
        documents[f"commands/{spec.routing_key}.json"] = {
            "$schema": DIALECT,
            **schema,
            "title": spec.routing_key,
            "description": f"{spec.model.__doc__}\n\n{spec.method} {spec.path}",
        }
        if spec.success_event is not None:
            documents[f"events/{spec.success_event}.json"] = _event_schema(
                SuccessEvent, spec.success_event, f"{spec.routing_key} succeeded."
            )
        documents[f"events/{spec.failure_event}.json"] = _event_schema(
            FailureEvent, spec.failure_event, f"{spec.routing_key} failed."
        )
    for event_type, description in JOB_EVENTS.items():
        documents[f"events/{event_type}.json"] = _event_schema(
            SuccessEvent, event_type, description
        )
    documents[f"events/{UNKNOWN_COMMAND_EVENT}.json"] = _event_schema(
        FailureEvent,
        UNKNOWN_COMMAND_EVENT,
        "UnknownCommand for a routing key that is not a plain dotted word sequence; other "
        "unknown routing keys get `<routing key>.failed` with the same shape.",
    )
    return documents
