"""The events a command ends in, in the contract's camelCase shape.

A success event carries the API's inner object unchanged as `result`; a failure event carries
`error`, which is the API's own error object when there is one, plus the HTTP status (null when
the API was never reached) and whether trying again later could help.

No event is larger than MAX_EVENT_BYTES: a result that would not fit is replaced by a
`ResultTooLarge` failure (`oversized`), and the texts a failure copies are bounded when its
error is made (`service.errors`), so a failure event always fits. An event the broker refuses
all the same is replaced by an `EventRefused` failure with the same id (`refused`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic.alias_generators import to_camel

from service.errors import EventRefused, ResultTooLarge, WorkerError
from service.limits import (
    MAX_CODE_CHARACTERS,
    MAX_DETAIL_MESSAGE_CHARACTERS,
    MAX_DETAILS,
    MAX_MESSAGE_CHARACTERS,
    MAX_TARGET_CHARACTERS,
    clip,
)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class ErrorDetail(_Model):
    """One specific problem: the API's detail object, or one bad field of a command."""

    code: str = Field(max_length=MAX_CODE_CHARACTERS)
    message: str = Field(max_length=MAX_DETAIL_MESSAGE_CHARACTERS)
    target: str | None = Field(default=None, max_length=MAX_TARGET_CHARACTERS)


class EventError(_Model):
    status: int | None = Field(description="The API's HTTP status; null if it was not reached.")
    code: str = Field(max_length=MAX_CODE_CHARACTERS)
    message: str = Field(
        max_length=MAX_MESSAGE_CHARACTERS,
        description="Cut short (ending in …) when the API's or a validator's was longer; it says "
        "how many details were not listed.",
    )
    target: str | None = Field(default=None, max_length=MAX_TARGET_CHARACTERS)
    details: list[ErrorDetail] = Field(
        default=[], max_length=MAX_DETAILS, description="The first details, when there are more."
    )
    retriable: bool = Field(description="True when the same command may succeed later.")


class BaseEvent(_Model):
    event_id: str = Field(description="Unique id of this event, also its AMQP message_id.")
    type: str = Field(description="Event type, also the routing key and the AMQP type.")
    command_id: str = Field(description="The command's message_id (or the id made up for it).")
    correlation_id: str
    occurred_at: datetime = Field(json_schema_extra={"format": "date-time"})
    attempts: int = Field(ge=0, description="HTTP requests made to the API for this command.")

    @field_serializer("occurred_at")
    def _utc(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SuccessEvent(BaseEvent):
    result: dict[str, Any] = Field(description="The API's inner object, unchanged.")


class FailureEvent(BaseEvent):
    error: EventError


Event = SuccessEvent | FailureEvent


def new_event_id() -> str:
    return str(uuid.uuid4())


def success(
    event_type: str,
    *,
    command_id: str,
    correlation_id: str,
    result: dict[str, Any],
    attempts: int,
    now: datetime,
) -> SuccessEvent:
    return SuccessEvent(
        event_id=new_event_id(),
        type=event_type,
        command_id=command_id,
        correlation_id=correlation_id,
        occurred_at=now,
        attempts=attempts,
        result=result,
    )


def failure(
    event_type: str,
    *,
    command_id: str,
    correlation_id: str,
    error: WorkerError,
    now: datetime,
) -> FailureEvent:
    return FailureEvent(
        event_id=new_event_id(),
        type=event_type,
        command_id=command_id,
        correlation_id=correlation_id,
        occurred_at=now,
        attempts=error.attempts,
        error=EventError(
            status=error.status,
            code=error.code,
            message=error.message,
            target=error.target,
            details=[ErrorDetail(**detail) for detail in error.details],
            retriable=error.retriable,
        ),
    )


def oversized(event: SuccessEvent, max_bytes: int, status: int) -> ResultTooLarge | None:
    """The failure that stands in for `event` when it is larger than `max_bytes`, naming the
    limit, the API's status and the resource's id (also the error's `target`); None if it fits.
    """
    size = len(event.model_dump_json(by_alias=True).encode())
    if size <= max_bytes:
        return None
    resource = event.result.get("id")
    resource_id = str(resource) if isinstance(resource, str | int) else None
    named = f" for the resource {clip(resource_id, MAX_TARGET_CHARACTERS)}" if resource_id else ""
    error = ResultTooLarge(
        f"The API answered HTTP {status}{named}, but its result makes an event of {size} bytes, "
        f"more than MAX_EVENT_BYTES ({max_bytes} bytes).",
        status=status,
        target=resource_id,
    )
    error.attempts = event.attempts
    return error


@dataclass(frozen=True)
class EncodedEvent:
    """An event as it travels and as it is recorded: the bytes, plus the AMQP properties."""

    body: bytes
    event_id: str
    type: str
    command_id: str
    correlation_id: str

    @classmethod
    def of(cls, event: Event) -> EncodedEvent:
        body = event.model_dump_json(by_alias=True).encode()
        return cls(body, event.event_id, event.type, event.command_id, event.correlation_id)

    @classmethod
    def parse(cls, body: bytes) -> EncodedEvent:
        """A recorded event, published again byte for byte."""
        document = json.loads(body)
        return cls(
            body,
            document["eventId"],
            document["type"],
            document["commandId"],
            document["correlationId"],
        )


def refused(event: EncodedEvent, failure_type: str, message: str, now: datetime) -> EncodedEvent:
    """The failure event published in place of `event`, which could not be: the same event id
    (consumers see one event for the outcome), the command's failure type, the status and
    attempts the refused event had, `message` saying why."""
    document = json.loads(event.body)
    error = document.get("error")
    status = error.get("status") if isinstance(error, dict) else None
    stand_in = EventRefused(message, status=status if isinstance(status, int) else None)
    stand_in.attempts = document.get("attempts", 0)
    substitute = failure(
        failure_type,
        command_id=event.command_id,
        correlation_id=event.correlation_id,
        error=stand_in,
        now=now,
    )
    return EncodedEvent.of(substitute.model_copy(update={"event_id": event.event_id}))
