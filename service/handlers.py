"""The one pipeline every command goes through.

delivery → ids → validate (spec.parse, no I/O) → claim the id (a recorded outcome is published
again, nothing is called; a valid command's first API slot is reserved in the same round trip)
→ API call (limiter, token, retries inside the client) → event
→ record the outcome → dead-letter copy when the failure is a fault → publish.

A retriable failure is not final while delayed attempts remain: the command goes to a delay
queue instead and comes back later, with no event in between. The broker adapter acks the
command only after `handle` returns, that is after every publish here was confirmed.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from service.api import ApiResponse
from service.commands import ApiRequest, CommandSpec, UnexpectedAnswer
from service.errors import (
    ApiError,
    InvalidCommand,
    RetriesExhausted,
    UnknownCommand,
    WorkerError,
)
from service.events import EncodedEvent, Event, failure, success
from service.idempotency import OutcomeStore, Recorded, claim_when_free
from service.jobs import JobFollower
from service.limiter import Reservation
from service.messages import Command, JobRef
from service.metrics import Metrics

log = structlog.get_logger("itwin_worker.handlers")

_JSON_CONTENT_TYPE = re.compile(r"^application/json\s*(;.*)?$", re.IGNORECASE)
# Routing keys are producer input that becomes our event's routing key: only plain words.
SAFE_ROUTING_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$")
UNKNOWN_COMMAND_EVENT = "command.failed"

# Headers the worker reads on a command. The `x-itwin-*` ones count only on messages that came
# through the worker's own exchanges (`service.trust`).
DELIVERY_COUNT_HEADER = "x-delivery-count"  # set by quorum queues on every delivery
DELAYED_ATTEMPT_HEADER = "x-itwin-delayed-attempt"
REPLAY_HEADER = "x-itwin-replay"


@dataclass(frozen=True)
class Delivery:
    """What the pipeline needs of one broker message, whatever library delivered it."""

    body: bytes
    routing_key: str
    queue: str = ""
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    """The headers the worker may act on (see `service.trust`)."""
    ignored_headers: tuple[str, ...] = ()
    """The worker's own headers, sent by someone else: names only, made printable."""
    refused_reply_to: str | None = None
    """A reply_to outside REPLY_TO_PATTERN (then `reply_to` is None), made printable."""

    def header_int(self, name: str) -> int:
        value = self.headers.get(name)
        return value if isinstance(value, int) and value >= 0 else 0


class Api(Protocol):
    async def send(
        self, request: ApiRequest, reserved: Reservation | None = None
    ) -> ApiResponse: ...


class Outbox(Protocol):
    """Where events, delays and dead letters go; each returns once the broker confirmed."""

    async def publish(self, event: EncodedEvent, reply_to: str | None) -> None: ...

    async def dead_letter(
        self, delivery: Delivery, event: EncodedEvent, reason: WorkerError
    ) -> None: ...

    async def delay(self, delivery: Delivery, attempt: int, seconds: float) -> None: ...


def failure_event_type(spec: CommandSpec | None, routing_key: str) -> str:
    if spec is not None:
        return spec.failure_event
    # fullmatch: `$` would also match before a final line break.
    if SAFE_ROUTING_KEY.fullmatch(routing_key):
        return f"{routing_key}.failed"
    return UNKNOWN_COMMAND_EVENT


@dataclass(frozen=True)
class DeliveryPolicy:
    retry_delays: Sequence[float] = (10.0, 60.0, 300.0)
    """Delays before the command is tried again after a retriable failure, in order."""
    delivery_limit: int = 5
    """The queues' x-delivery-limit: on the last delivery a crash becomes a failure event."""
    crash_backoff: float = 0.5
    """Seconds to wait before a crashed delivery goes back to the queue, doubled with each
    delivery up to `crash_backoff_max`."""
    crash_backoff_max: float = 10.0

    def crash_wait(self, delivery_count: int) -> float:
        return min(self.crash_backoff_max, self.crash_backoff * 2.0 ** min(delivery_count, 62))


class Pipeline:
    """Turns one delivery into exactly one event per recorded outcome."""

    def __init__(
        self,
        api: Api,
        outbox: Outbox,
        outcomes: OutcomeStore,
        *,
        metrics: Metrics,
        follower: JobFollower,
        policy: DeliveryPolicy = DeliveryPolicy(),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._metrics = metrics
        self._follower = follower
        self._api = api
        self._outbox = outbox
        self._outcomes = outcomes
        self._policy = policy
        self._now = now

    async def handle(self, spec: CommandSpec | None, delivery: Delivery) -> None:
        started = time.perf_counter()
        deduplicate = bool(delivery.message_id)
        # From here on the ids are settled: a made-up id stays the same through delays.
        command_id = delivery.message_id or str(uuid.uuid4())
        delivery = replace(
            delivery, message_id=command_id, correlation_id=delivery.correlation_id or command_id
        )
        structlog.contextvars.bind_contextvars(
            command_id=command_id,
            correlation_id=delivery.correlation_id,
            routing_key=delivery.routing_key,
        )
        if delivery.ignored_headers:
            log.warning(
                "ignored the worker's own headers: the message did not come through its exchanges",
                headers=list(delivery.ignored_headers),
            )
        if delivery.refused_reply_to is not None:
            log.warning(
                "reply_to not allowed by REPLY_TO_PATTERN; the event goes to the event exchange",
                reply_to=delivery.refused_reply_to,
            )
        routing_key = self._metrics.routing_key(delivery.routing_key)
        self._metrics.commands_received.labels(routing_key).inc()
        self._metrics.in_flight.inc()
        try:
            outcome, code = await self._handle(spec, delivery, command_id, deduplicate, started)
            self._metrics.commands_finished.labels(routing_key, outcome, code).inc()
        except Exception:
            # Back to the queue (the consumer nacks it). Waiting first makes a short outage of
            # Redis or the broker cost a few slow redeliveries, not the whole delivery limit
            # spent in milliseconds and the command dead-lettered.
            count = delivery.header_int(DELIVERY_COUNT_HEADER)
            wait = self._policy.crash_wait(count)
            log.warning(
                "command crashed; back to the queue", delivery_count=count, wait_s=wait,
                exc_info=True,
            )  # fmt: skip
            await asyncio.sleep(wait)
            raise
        finally:
            self._metrics.in_flight.dec()
            structlog.contextvars.unbind_contextvars("command_id", "correlation_id", "routing_key")

    async def _handle(
        self,
        spec: CommandSpec | None,
        delivery: Delivery,
        command_id: str,
        deduplicate: bool,
        started: float,
    ) -> tuple[str, str]:
        """Work the command; return its outcome and error code, for metrics."""
        prepared: Prepared | Exception
        try:
            prepared = _prepare(spec, delivery)
        except Exception as exc:  # re-raised in `_outcome`: a refusal becomes its event, a bug
            prepared = exc  # in validation meets the poison bound like any other crash
        token, reservation = None, None
        if deduplicate:
            claim = await claim_when_free(
                self._outcomes,
                command_id,
                fresh=bool(delivery.headers.get(REPLAY_HEADER)),
                # Invalid input must not spend API budget.
                reserve=not isinstance(prepared, Exception),
            )
            if isinstance(claim, Recorded):
                # An empty record: the command's only announcement is its job's own events.
                if claim.event:
                    await self._outbox.publish(EncodedEvent.parse(claim.event), delivery.reply_to)
                log.info("duplicate command: answered from its recorded outcome")
                return "duplicate", ""
            token, reservation = claim.token, claim.reservation
        else:
            log.warning("command has no message_id; it cannot be deduplicated")
        try:
            event, reason, status, command = await self._outcome(
                spec, delivery, command_id, prepared, reservation
            )
        except Exception as exc:
            if token is not None:
                await self._outcomes.release(command_id, token)
            if delivery.header_int(DELIVERY_COUNT_HEADER) < self._policy.delivery_limit:
                raise
            reason = RetriesExhausted(
                f"The worker failed on this command {self._policy.delivery_limit + 1} times "
                f"({type(exc).__name__}).",
                retriable=False,
            )
            event, status, command = self._failure(spec, delivery, command_id, reason), None, None
            token = None
        attempt = delivery.header_int(DELAYED_ATTEMPT_HEADER)
        if reason is not None and reason.retriable and attempt < len(self._policy.retry_delays):
            delay = self._policy.retry_delays[attempt]
            if token is not None:
                await self._outcomes.release(command_id, token)
            await self._outbox.delay(delivery, attempt + 1, delay)
            log.info("command delayed", error_code=reason.code, delay_s=delay, attempt=attempt + 1)
            return "delayed", reason.code
        await self._conclude(
            spec, delivery, command=command, event=event, reason=reason, token=token
        )
        log.info(
            "command finished",
            outcome="success" if reason is None else "failure",
            event_type=event.type if event else "following",
            api_status=status,
            error_code=reason.code if reason else None,
            attempts=event.attempts if event else 1,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return ("success", "") if reason is None else ("failure", reason.code)

    async def _conclude(
        self,
        spec: CommandSpec | None,
        delivery: Delivery,
        *,
        command: Command | None,
        event: Event | None,
        reason: WorkerError | None,
        token: str | None,
    ) -> None:
        """Follow the job if asked, record the outcome, dead-letter a fault, publish."""
        command_id = delivery.message_id or ""
        if isinstance(command, JobRef) and spec is not None and spec.follows_job:
            # Before the record: a crash here makes the command come back and start again;
            # the first poll's id is fixed, so a second start adds no second follower.
            await self._follower.start(
                command.job_id,
                command_id,
                delivery.correlation_id or command_id,
                delivery.reply_to,
                at_once=spec.success_event is None,
            )
        encoded = EncodedEvent.of(event) if event is not None else None
        if token is not None:
            if reason is None or not reason.retriable:
                await self._outcomes.record(command_id, token, encoded.body if encoded else b"")
            else:
                await self._outcomes.release(command_id, token)
        if encoded is not None:
            if reason is not None and reason.dead_letter:
                await self._outbox.dead_letter(delivery, encoded, reason)
                self._metrics.dead_letters.labels(reason.code).inc()
            await self._outbox.publish(encoded, delivery.reply_to)

    def _failure(
        self, spec: CommandSpec | None, delivery: Delivery, command_id: str, error: WorkerError
    ) -> Event:
        return failure(
            failure_event_type(spec, delivery.routing_key),
            command_id=command_id,
            correlation_id=delivery.correlation_id or command_id,
            error=error,
            now=self._now(),
        )

    async def _outcome(
        self,
        spec: CommandSpec | None,
        delivery: Delivery,
        command_id: str,
        prepared: Prepared | Exception,
        reservation: Reservation | None,
    ) -> tuple[Event | None, WorkerError | None, int | None, Command | None]:
        """The event (None when the job's own events will speak), the error, the status."""
        try:
            if isinstance(prepared, Exception):
                raise prepared
            command, request = prepared
            assert spec is not None  # a prepared command has a spec
            response = await self._api.send(request, reservation)
            result = _result(response, spec, command)
        except WorkerError as error:
            return self._failure(spec, delivery, command_id, error), error, error.status, None
        if spec.success_event is None:
            return None, None, response.status, command
        event = success(
            spec.success_event,
            command_id=command_id,
            correlation_id=delivery.correlation_id or command_id,
            result=result,
            attempts=response.attempts,
            now=self._now(),
        )
        return event, None, response.status, command


Prepared = tuple[Command, ApiRequest]


def _prepare(spec: CommandSpec | None, delivery: Delivery) -> Prepared:
    """Everything about the command that needs no I/O: a known key, JSON, a valid body."""
    if spec is None:
        raise UnknownCommand("No command is bound to this routing key.", target="routingKey")
    _check_content_type(delivery.content_type)
    command = spec.parse(delivery.body)
    return command, spec.request(command)


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


def _result(response: ApiResponse, spec: CommandSpec, command: Command) -> dict[str, Any]:
    try:
        return spec.result_of(command, response.document)
    except UnexpectedAnswer as exc:
        error = ApiError(
            str(exc), status=response.status, code="UnexpectedResponse", dead_letter=True
        )
        error.attempts = response.attempts
        raise error from None
