"""The one pipeline every command goes through.

delivery → ids → validate (spec.parse) → API call (limiter, token, retries inside the client)
→ event → dead-letter copy when the failure is a fault → publish. The broker adapter acks the
command only after `handle` returns, that is after every publish here was confirmed.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from service.api import ApiResponse
from service.commands import ApiRequest, CommandSpec
from service.errors import ApiError, InvalidCommand, UnknownCommand, WorkerError
from service.events import Event, failure, success

log = structlog.get_logger("itwin_worker.handlers")

_JSON_CONTENT_TYPE = re.compile(r"^application/json\s*(;.*)?$", re.IGNORECASE)
# Routing keys are producer input that becomes our event's routing key: only plain words.
_SAFE_ROUTING_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$")
UNKNOWN_COMMAND_EVENT = "command.failed"


@dataclass(frozen=True)
class Delivery:
    """What the pipeline needs of one broker message, whatever library delivered it."""

    body: bytes
    routing_key: str
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)


class Api(Protocol):
    async def send(self, request: ApiRequest) -> ApiResponse: ...


class Outbox(Protocol):
    """Where events and dead letters go; every method returns once the broker confirmed."""

    async def publish(self, event: Event, reply_to: str | None) -> None: ...

    async def dead_letter(self, delivery: Delivery, event: Event, reason: WorkerError) -> None: ...


def failure_event_type(spec: CommandSpec | None, routing_key: str) -> str:
    if spec is not None:
        return spec.failure_event
    if _SAFE_ROUTING_KEY.match(routing_key):
        return f"{routing_key}.failed"
    return UNKNOWN_COMMAND_EVENT


class Pipeline:
    """Turns one delivery into exactly one event (and a dead letter when it is a fault)."""

    def __init__(
        self,
        api: Api,
        outbox: Outbox,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = api
        self._outbox = outbox
        self._now = now

    async def handle(self, spec: CommandSpec | None, delivery: Delivery) -> Event:
        started = time.perf_counter()
        command_id = delivery.message_id or str(uuid.uuid4())
        correlation_id = delivery.correlation_id or command_id
        structlog.contextvars.bind_contextvars(
            command_id=command_id,
            correlation_id=correlation_id,
            routing_key=delivery.routing_key,
        )
        try:
            if not delivery.message_id:
                log.warning("command has no message_id; it cannot be deduplicated")
            event, reason, status = await self._outcome(spec, delivery, command_id, correlation_id)
            if reason is not None and reason.dead_letter:
                await self._outbox.dead_letter(delivery, event, reason)
            await self._outbox.publish(event, delivery.reply_to)
            log.info(
                "command finished",
                outcome="success" if reason is None else "failure",
                event_type=event.type,
                api_status=status,
                error_code=reason.code if reason else None,
                attempts=event.attempts,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            return event
        finally:
            structlog.contextvars.unbind_contextvars("command_id", "correlation_id", "routing_key")

    async def _outcome(
        self, spec: CommandSpec | None, delivery: Delivery, command_id: str, correlation_id: str
    ) -> tuple[Event, WorkerError | None, int | None]:
        try:
            if spec is None:
                raise UnknownCommand(
                    "No command is bound to this routing key.", target="routingKey"
                )
            response, result = await self._call(spec, delivery)
        except WorkerError as error:
            event_type = failure_event_type(spec, delivery.routing_key)
            event: Event = failure(
                event_type,
                command_id=command_id,
                correlation_id=correlation_id,
                error=error,
                now=self._now(),
            )
            return event, error, error.status
        event = success(
            spec.success_event,
            command_id=command_id,
            correlation_id=correlation_id,
            result=result,
            attempts=response.attempts,
            now=self._now(),
        )
        return event, None, response.status

    async def _call(
        self, spec: CommandSpec, delivery: Delivery
    ) -> tuple[ApiResponse, dict[str, Any]]:
        _check_content_type(delivery.content_type)
        command = spec.parse(delivery.body)
        response = await self._api.send(spec.request(command))
        return response, _inner_object(response, spec)


def _check_content_type(content_type: str | None) -> None:
    if content_type and not _JSON_CONTENT_TYPE.match(content_type):
        raise InvalidCommand(
            "Commands are UTF-8 JSON: content_type must be application/json or absent.",
            details=[
                {
                    "code": "InvalidValue",
                    "message": "content_type must be application/json or absent",
                    "target": "content_type",
                }
            ],
        )


def _inner_object(response: ApiResponse, spec: CommandSpec) -> dict[str, Any]:
    inner = response.document.get(spec.result_key)
    if not isinstance(inner, dict):
        error = ApiError(
            f"The API's answer has no '{spec.result_key}' object.",
            status=response.status,
            code="UnexpectedResponse",
            dead_letter=True,
        )
        error.attempts = response.attempts
        raise error
    return inner
