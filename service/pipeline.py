"""The one pipeline every command goes through, in the order of this module.

enter (ids, log context) → validate (MAX_COMMAND_BYTES, then `spec.parse`, no I/O) → claim the
id (a recorded outcome is published again, nothing is called) → call (limiter, token, retries:
`service.api`) → outcome (an event, a failure if the result would not fit in MAX_EVENT_BYTES;
or the job's own events to come) → delay it (retriable, delays left) or conclude: follow the
job, record, dead-letter a fault, publish.

The broker adapter acks the command only after `handle` returns, that is after every publish
here was confirmed. A crash goes back to the queue (after a back-off); a crash in validation or
the call becomes a `RetriesExhausted` failure event on the queue's last delivery instead, so
even a poison command ends in one event.

A request that is not safe to repeat is sent at most once: it is marked sent in the command's
record just before it leaves (`before_sending`, the recovery point), a takeover of an orphan so
marked concludes it without a call (`_orphaned`), the lease is renewed while the command is held
(`LeaseKeeper`), and a delivery lost while the request is out leaves its command running to its
record (`Detached`), which the next delivery publishes (docs/failure-modes.md).

An outage is not a crash: while Redis does not answer, or a circuit breaker is open, the
command waits here, unacked, and tries again when the dependency is back (`service.outages`);
it spends none of its deliveries, delays or retries. An outcome the API gave is published and
acked even when Redis cannot record it (docs/failure-modes.md: the duplicate window).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from service.api import ApiResponse, BeforeSending
from service.commands import (
    ApiRequest,
    CommandSpec,
    UnexpectedAnswer,
    failure_event_type,
    next_token,
)
from service.delivery import Delivery
from service.errors import (
    ApiError,
    InvalidCommand,
    OutcomeUnknown,
    RetriesExhausted,
    UnknownCommand,
    WorkerError,
)
from service.events import EncodedEvent, Event, SuccessEvent, failure, oversized, success
from service.idempotency import (
    Leased,
    LeaseKeeper,
    Orphaned,
    OutcomeStore,
    Recorded,
    claim_when_free,
    new_token,
)
from service.jobs import JobFollower
from service.limits import Limits
from service.messages import Command
from service.metrics import Metrics
from service.outages import REDIS_UNAVAILABLE, DependencyDown, Outages

log = structlog.get_logger("itwin_worker.pipeline")

_JSON_CONTENT_TYPE = re.compile(r"^application/json\s*(;.*)?$", re.IGNORECASE)


class Api(Protocol):
    async def send(
        self, request: ApiRequest, *, before_sending: BeforeSending | None = None
    ) -> ApiResponse: ...


class Publisher(Protocol):
    """Where events, delays and dead letters go; each returns once the broker confirmed."""

    async def publish(self, event: EncodedEvent, reply_to: str | None) -> None: ...

    async def dead_letter(
        self, delivery: Delivery, event: EncodedEvent, reason: WorkerError
    ) -> None: ...

    async def delay(self, delivery: Delivery, attempt: int, seconds: float) -> None: ...


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

    def delay_for(self, error: WorkerError | None, delivery: Delivery) -> float | None:
        """Seconds to park a retriable failure for, or None when the outcome is final."""
        attempt = delivery.delayed_attempt
        if error is None or not error.retriable or attempt >= len(self.retry_delays):
            return None
        return self.retry_delays[attempt]


@dataclass(frozen=True)
class Outcome:
    """What became of one command's call."""

    event: Event | None
    """The event to publish; None when the job's own events will speak (`job.follow`)."""
    error: WorkerError | None = None
    """None on success."""
    status: int | None = None
    """The API's HTTP status, None when the API was not reached."""
    command: Command | None = None
    """The validated command, when it succeeded (a job to follow)."""


@dataclass(frozen=True)
class Settled:
    """How `handle` left the command, for metrics."""

    how: Literal["success", "failure", "duplicate", "delayed"]
    error_code: str = ""

    @classmethod
    def of(cls, outcome: Outcome) -> Settled:
        if outcome.error is None:
            return cls("success")
        return cls("failure", outcome.error.code)


class LeaseLost(Exception):
    """Our lease on the command ended before its request left: another holder has it now."""


@dataclass
class Held:
    """One command while this worker holds it."""

    lease: Leased | Orphaned | None
    requested: bool = False
    """A request of this command has left (or is leaving): its answer is worth waiting for,
    even when the delivery is lost meanwhile."""


@dataclass
class Detached:
    """Commands whose delivery was lost (a closed channel or connection) while their request
    was out: they finish and record their outcome, which their next delivery publishes."""

    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def keep(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (crash := task.exception()) is not None:
            # Mostly a publish on the lost channel: the outcome is recorded by then.
            log.warning(
                "a detached command ended early; its next delivery answers it",
                error=type(crash).__name__,
            )

    async def finish(self, within: float) -> None:
        """Wait for them up to `within` seconds, then cancel the rest (their request's mark
        stays: whoever takes them over concludes them, `OutcomeUnknown` at worst)."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=within)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class Pipeline:
    """Turns one delivery into exactly one event per recorded outcome."""

    def __init__(
        self,
        api: Api,
        publisher: Publisher,
        outcomes: OutcomeStore,
        *,
        metrics: Metrics,
        follower: JobFollower,
        policy: DeliveryPolicy = DeliveryPolicy(),
        outages: Outages | None = None,
        limits: Limits | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._metrics = metrics
        self._limits = limits or Limits()
        self._outages = outages or Outages(metrics, None, {})
        self._follower = follower
        self._api = api
        self._publisher = publisher
        self._outcomes = outcomes
        self._leases = LeaseKeeper(outcomes)
        self._policy = policy
        self._now = now
        self.detached = Detached()

    async def handle(self, spec: CommandSpec | None, delivery: Delivery) -> None:
        """Work the delivery to its end. Its work runs as a task of its own: when the delivery
        is lost under it (FastStream's handler is cancelled with its channel) a request already
        out is not thrown away, the command finishes and records its outcome."""
        delivery = self._enter(delivery)
        held = Held(None)
        work = asyncio.ensure_future(self._run(spec, delivery, held))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.done():
                # It ended as the delivery went; the delivery comes again either way.
                _ = work.cancelled() or work.exception()
            elif held.requested:
                log.warning("delivery lost while its request was out: finishing the command")
                self.detached.keep(work)
            else:
                work.cancel()
            raise
        except Exception:
            await self._back_off(delivery)
            raise
        finally:
            structlog.contextvars.unbind_contextvars("command_id", "correlation_id", "routing_key")

    async def close(self) -> None:
        await self._leases.close()

    def _enter(self, delivery: Delivery) -> Delivery:
        """Settle the ids (a made-up id stays the same through delays) and the log context."""
        if not delivery.message_id:
            log.warning("command has no message_id; it cannot be deduplicated")
        command_id = delivery.message_id or str(uuid.uuid4())
        delivery = replace(
            delivery,
            message_id=command_id,
            correlation_id=delivery.correlation_id or command_id,
            id_made_up=not delivery.message_id,
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
        return delivery

    async def _run(self, spec: CommandSpec | None, delivery: Delivery, held: Held) -> None:
        started = time.perf_counter()
        routing_key = self._metrics.routing_key(delivery.routing_key)
        self._metrics.commands_received.labels(routing_key).inc()
        self._metrics.in_flight.inc()
        try:
            settled = await self._work(spec, delivery, held, started)
        finally:
            self._metrics.in_flight.dec()
        self._metrics.commands_finished.labels(routing_key, settled.how, settled.error_code).inc()

    async def _work(
        self, spec: CommandSpec | None, delivery: Delivery, held: Held, started: float
    ) -> Settled:
        try:
            prepared = _validate(spec, delivery, self._limits.command_bytes)
        except Exception as crash:
            return await self._poisoned(spec, delivery, crash)
        unsent_token: str | None = None
        while True:
            # Waits while Redis does not answer; any other crash goes back to the queue as it
            # is (the queue's delivery limit bounds it, the command reaches the dead-letter
            # queue untouched, for a replay).
            claim = await self._claim(delivery, unsent_token)
            if isinstance(claim, Recorded):
                await self._answer_again(spec, delivery, prepared, claim)
                return Settled("duplicate")
            held.lease = claim
            with (
                self._leases.holding(delivery.message_id or "", claim.token) if claim else _NOT_HELD
            ):
                try:
                    if isinstance(claim, Orphaned):
                        outcome = await self._orphaned(spec, delivery, prepared)
                    else:
                        outcome = await self._call(spec, delivery, prepared, held)
                except DependencyDown as down:
                    # Nothing took effect: let go of it (its mark too), wait, claim it again
                    # (with the same token, should Redis not hear the release now).
                    await self._release(delivery, claim, unsent=isinstance(claim, Leased))
                    unsent_token = claim.token if isinstance(claim, Leased) else None
                    await self._outages.wait(down.dependency)
                    continue
                except LeaseLost:
                    log.warning("lease lost before the request left: claiming the command again")
                    unsent_token = None
                    continue
                except Exception as crash:
                    await self._release(delivery, claim)
                    return await self._poisoned(spec, delivery, crash)
                except BaseException:
                    await self._release(delivery, claim)
                    raise
                return await self._settle(spec, delivery, outcome, claim, started)

    async def _answer_again(
        self,
        spec: CommandSpec | None,
        delivery: Delivery,
        prepared: Prepared | WorkerError,
        recorded: Recorded,
    ) -> None:
        """A command already concluded: its recorded event again, and its job followed (again:
        its worker may have stopped between the record and the start)."""
        if spec is not None and spec.follows is not None and not isinstance(prepared, WorkerError):
            # An empty record: the command's only announcement is its job's own events.
            document = json.loads(recorded.event) if recorded.event else {}
            if "error" not in document:
                await self._follow(spec, delivery, prepared[0], document.get("result", {}))
        if recorded.event:
            await self._publisher.publish(EncodedEvent.parse(recorded.event), delivery.reply_to)
        log.info("duplicate command: answered from its recorded outcome")

    async def _claim(
        self, delivery: Delivery, unsent_token: str | None
    ) -> Recorded | Leased | Orphaned | None:
        """The lease on the command id (None: no id of the producer's, nothing to claim)."""
        if delivery.id_made_up:
            return None
        command_id = delivery.message_id or ""
        # One token for every try: a claim that ran but whose answer was lost (Redis went away
        # mid-call) is then found again as ours, not waited out as another holder's lease.
        token = unsent_token or new_token()
        while True:
            try:
                claim = await claim_when_free(
                    self._outcomes, command_id, fresh=delivery.replay, unsent_token=token
                )
            except REDIS_UNAVAILABLE:
                await self._outages.wait_for_redis()
                continue
            self._outages.redis_answered()
            return claim

    async def _release(
        self, delivery: Delivery, lease: Leased | Orphaned | None, *, unsent: bool = False
    ) -> None:
        """Let go of the lease; with Redis away it expires on its own (the lease time)."""
        if lease is None:
            return
        command_id = delivery.message_id or ""
        self._leases.let_go(command_id, lease.token)
        try:
            await self._outcomes.release(command_id, lease.token, unsent=unsent)
        except REDIS_UNAVAILABLE:
            self._outages.redis_failed()

    async def _call(
        self,
        spec: CommandSpec | None,
        delivery: Delivery,
        prepared: Prepared | WorkerError,
        held: Held,
    ) -> Outcome:
        if isinstance(prepared, WorkerError):
            return self._failed(spec, delivery, prepared)
        command, request = prepared
        assert spec is not None  # a prepared command has a spec
        command_id = delivery.message_id or ""
        lease = held.lease
        outcomes = self._outcomes

        async def before_sending() -> None:
            # The recovery point: once marked, a takeover concludes the command instead of
            # sending it again.
            marked = (
                lease is None
                or request.safe_to_repeat
                or await outcomes.mark_sent(command_id, lease.token)
            )
            if not marked:
                raise LeaseLost
            held.requested = True

        try:
            response = await self._send(spec, command, request, before_sending)
            result = _result(response, spec, command)
        except WorkerError as error:
            return self._failed(spec, delivery, error)
        if spec.success_event is None:
            return Outcome(None, status=response.status, command=command)
        event = success(
            spec.success_event,
            command_id=command_id,
            correlation_id=delivery.correlation_id or command_id,
            result=result,
            attempts=response.attempts,
            now=self._now(),
        )
        return self._succeeded(spec, delivery, event, response.status, command)

    async def _orphaned(
        self, spec: CommandSpec | None, delivery: Delivery, prepared: Prepared | WorkerError
    ) -> Outcome:
        """A replica sent the command's request and stopped before recording its answer: find
        what it made where the API can tell (`CommandSpec.lookup`), else the outcome is
        unknown. The request is never sent again."""
        log.warning("an earlier holder sent the request and left no outcome: not sent again")
        lookup = spec.lookup if spec is not None else None
        if lookup is None or spec is None or spec.success_event is None:
            return self._unknown(spec, delivery, "")
        if isinstance(prepared, WorkerError):  # it was valid when it was sent
            return self._failed(spec, delivery, prepared)
        command, _ = prepared
        matches: list[dict[str, Any]] = []
        continuation: str | None = None
        try:
            for _ in range(lookup.max_pages):
                response = await self._api.send(lookup.request(command, continuation))
                matches += lookup.found(command, response.document)
                continuation = next_token(response.document)
                if continuation is None:
                    break
        except WorkerError as error:
            return self._unknown(spec, delivery, f" Looking it up failed ({error.code}).")
        except UnexpectedAnswer:
            return self._unknown(spec, delivery, " Looking it up met an unexpected answer.")
        if len(matches) != 1:
            return self._unknown(
                spec, delivery, f" Looking it up found {len(matches)} that match it."
            )
        log.info("the lost request's outcome was found: it took effect")
        command_id = delivery.message_id or ""
        event = success(
            spec.success_event,
            command_id=command_id,
            correlation_id=delivery.correlation_id or command_id,
            result=matches[0],
            attempts=1,
            now=self._now(),
        )
        return self._succeeded(spec, delivery, event, response.status, command, lookup=True)

    def _succeeded(
        self,
        spec: CommandSpec,
        delivery: Delivery,
        event: SuccessEvent,
        status: int,
        command: Command,
        *,
        lookup: bool = False,
    ) -> Outcome:
        """The success, or a `ResultTooLarge` failure when its event would not fit."""
        too_large = oversized(event, self._limits.event_bytes, status)
        if too_large is not None:
            return self._failed(spec, delivery, too_large)
        # A lookup's status is not the command's own.
        return Outcome(event, status=None if lookup else status, command=command)

    def _unknown(self, spec: CommandSpec | None, delivery: Delivery, looked: str) -> Outcome:
        error = OutcomeUnknown(
            "A worker sent this request and stopped before its answer was recorded; it may "
            f"have taken effect, so it was not sent again.{looked}"
        )
        return self._failed(spec, delivery, error)

    async def _settle(
        self,
        spec: CommandSpec | None,
        delivery: Delivery,
        outcome: Outcome,
        lease: Leased | Orphaned | None,
        started: float,
    ) -> Settled:
        """Delay a retriable failure while delays remain, or conclude the command."""
        try:
            delay = self._policy.delay_for(outcome.error, delivery)
            if delay is not None and outcome.error is not None:
                # A retriable failure is one that proves the request had no effect.
                await self._release(delivery, lease, unsent=isinstance(lease, Leased))
                attempt = delivery.delayed_attempt + 1
                await self._publisher.delay(delivery, attempt, delay)
                log.info(
                    "command delayed", error_code=outcome.error.code, delay_s=delay,
                    attempt=attempt,
                )  # fmt: skip
                return Settled("delayed", outcome.error.code)
            await self._conclude(spec, delivery, outcome, lease)
        except BaseException:
            await self._release(delivery, lease)
            raise
        _log_finished(outcome, started)
        return Settled.of(outcome)

    async def _send(
        self,
        spec: CommandSpec,
        command: Command,
        request: ApiRequest,
        before_sending: BeforeSending,
    ) -> ApiResponse:
        """The call (limiter, token, retries: `service.api`). A refusal that may only mean an
        earlier attempt of this command took effect (`CommandSpec.confirm`: a repeated cancel)
        costs one GET that tells; if it shows so, its answer is the command's. Only requests
        safe to repeat have a `confirm`, so a crash here repeats nothing unsafe."""
        try:
            return await self._api.send(request, before_sending=before_sending)
        except ApiError as refusal:
            check = spec.confirmation(command, refusal)
            if check is None:
                raise
            read = await self._api.send(check, before_sending=before_sending)
            if not spec.confirmed(read.document):
                raise
            log.info("refused after a lost answer; the read shows the first attempt took effect")
            return replace(read, attempts=refusal.attempts + read.attempts)

    async def _conclude(
        self,
        spec: CommandSpec | None,
        delivery: Delivery,
        outcome: Outcome,
        lease: Leased | Orphaned | None,
    ) -> None:
        """Follow the job if asked, record the outcome, dead-letter a fault, publish."""
        command_id = delivery.message_id or ""
        command, error = outcome.command, outcome.error
        encoded = EncodedEvent.of(outcome.event) if outcome.event is not None else None
        if lease is not None:
            # Final, retriable or not (its delays are spent): a re-send gets this same event.
            # An operator's `dlq replay` is how a final failure is tried again.
            body = encoded.body if encoded else b""
            self._leases.let_go(command_id, lease.token)
            try:
                recorded = await self._outcomes.record(
                    command_id, lease.token, body, replace=delivery.replay
                )
            except REDIS_UNAVAILABLE:
                # The API acted: its outcome is published (and the command acked) all the
                # same; only a re-send of this id would be worked again.
                self._outages.redis_failed()
                log.debug("outcome published without its record: redis does not answer")
            else:
                if recorded != body:
                    # Our lease ended while we worked and another holder concluded the
                    # command first: its outcome is the command's one.
                    log.warning("another holder recorded this command's outcome first")
                    if recorded:
                        await self._publisher.publish(
                            EncodedEvent.parse(recorded), delivery.reply_to
                        )
                    return
        if command is not None:
            result = outcome.event.result if isinstance(outcome.event, SuccessEvent) else {}
            await self._follow(spec, delivery, command, result)
        if encoded is not None:
            if error is not None and error.dead_letter:
                await self._publisher.dead_letter(delivery, encoded, error)
                self._metrics.dead_letters.labels(error.code).inc()
            await self._publisher.publish(encoded, delivery.reply_to)

    async def _follow(
        self,
        spec: CommandSpec | None,
        delivery: Delivery,
        command: Command,
        result: dict[str, Any],
    ) -> None:
        """Start following the job a successful command names or made. After the record, so a
        request that is not safe to repeat (a v2 create) is recorded first; a crash between the
        two is mended by the next delivery, which starts it again from the record. The first
        poll's id is fixed, so a second start adds no second follower."""
        if spec is None or spec.follows is None:
            return
        command_id = delivery.message_id or ""
        await self._follower.start(
            spec.job_to_follow(command, result),
            command_id,
            delivery.correlation_id or command_id,
            delivery.reply_to,
            at_once=spec.success_event is None,
            kind=spec.follows,
        )

    async def _back_off(self, delivery: Delivery) -> None:
        """Wait before the crashed delivery goes back to the queue: a short outage of Redis or
        the broker then costs a few slow redeliveries, not the whole delivery limit spent in
        milliseconds and the command dead-lettered."""
        count = delivery.delivery_count
        wait = self._policy.crash_wait(count)
        log.warning(
            "command crashed; back to the queue", delivery_count=count, wait_s=wait, exc_info=True
        )
        await asyncio.sleep(wait)

    async def _poisoned(
        self, spec: CommandSpec | None, delivery: Delivery, crash: Exception
    ) -> Settled:
        """A crash in validation or in the call: back to the queue (raised again), except on
        the queue's last delivery, where it becomes a failure event and a dead letter (not
        recorded), so even a poison command ends in one event."""
        if delivery.delivery_count < self._policy.delivery_limit:
            raise crash
        error = RetriesExhausted(
            f"The worker failed on this command {self._policy.delivery_limit + 1} times "
            f"({type(crash).__name__}).",
            retriable=False,
        )
        log.error("command crashed on its last delivery", exc_info=crash)
        outcome = self._failed(spec, delivery, error)
        await self._conclude(spec, delivery, outcome, None)
        return Settled.of(outcome)

    def _failed(self, spec: CommandSpec | None, delivery: Delivery, error: WorkerError) -> Outcome:
        error = error.settled()
        command_id = delivery.message_id or ""
        event = failure(
            failure_event_type(spec, delivery.routing_key),
            command_id=command_id,
            correlation_id=delivery.correlation_id or command_id,
            error=error,
            now=self._now(),
        )
        return Outcome(event, error, error.status)


_NOT_HELD = contextlib.nullcontext()


def _log_finished(outcome: Outcome, started: float) -> None:
    error, event = outcome.error, outcome.event
    log.info(
        "command finished",
        outcome="success" if error is None else "failure",
        event_type=event.type if event else "following",
        api_status=outcome.status,
        error_code=error.code if error else None,
        attempts=event.attempts if event else 1,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )


Prepared = tuple[Command, ApiRequest]


def _validate(
    spec: CommandSpec | None, delivery: Delivery, max_bytes: int
) -> Prepared | WorkerError:
    """Everything about the command that needs no I/O: a known key, a size within `max_bytes`
    (before any parsing), JSON, a valid body. A refusal is returned, to become the command's
    failure event; a bug raises, and meets the poison bound like any other crash."""
    if spec is None:
        return UnknownCommand("No command is bound to this routing key.", target="routingKey")
    if len(delivery.body) > max_bytes:
        return InvalidCommand(
            f"The command body ({len(delivery.body)} bytes) is larger than MAX_COMMAND_BYTES "
            f"({max_bytes} bytes); it was not read.",
            details=[
                {
                    "code": "InvalidValue",
                    "message": f"larger than MAX_COMMAND_BYTES ({max_bytes} bytes)",
                    "target": "body",
                }
            ],
        )
    try:
        _check_content_type(delivery.content_type)
        command = spec.parse(delivery.body)
        return command, spec.request(command)
    except InvalidCommand as refusal:
        return refusal


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
