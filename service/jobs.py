"""Following a ContextCapture job until it ends: progress events, then one terminal event.

The schedule lives in the broker, not in memory: each next poll is a message parked in a delay
queue, so any replica can take it, a crash or redeploy loses no followed job, and following
10 000 jobs costs the worker nothing while they wait.

A poll is idempotent by its id (`poll:<command id>:<seq>`). Its decision is recorded before
anything is published; a redelivered poll finishes what the first one started (terminal event,
next poll) but never publishes its progress event again, and a poll already done is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from service.api import ApiResponse
from service.commands import JOB_PATH, PROGRESS_PATH, ApiRequest
from service.errors import ApiError, WorkerError
from service.events import EncodedEvent, failure, success
from service.idempotency import OutcomeStore, Recorded, claim_when_free
from service.metrics import Metrics
from service.tracing import Tracing, carrier, link_to

log = structlog.get_logger("itwin_worker.jobs")

PROGRESS_EVENT = "job.progress"
FOLLOW_FAILED_EVENT = "job.follow.failed"
TERMINAL_EVENTS = {"success": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}
JOB_EVENTS = {
    PROGRESS_EVENT: "A followed job's percentage or step changed: `result` is "
    "`{jobId, percentage, state, step}`; `commandId` is the command that started the following.",
    **{
        event: f"A followed job ended with state `{state}`: `result` is the final job object; "
        "exactly one terminal event per followed job."
        for state, event in TERMINAL_EVENTS.items()
    },
}
"""Events of a followed job, beyond each command's own."""


class Poll(BaseModel):
    """The next look at a job: what was last seen, and where in the back-off schedule we are."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    command_id: str
    correlation_id: str
    reply_to: str | None = None
    seq: int = 1
    index: int = 0
    percentage: int | None = None
    step: str | None = None
    trace: dict[str, str] = Field(default_factory=dict, max_length=2)
    """`traceparent` (and `tracestate`) of the command that started the following: each poll's
    span links to it."""
    due: FiniteFloat | None = None
    """When it was meant to run (Unix seconds): the schedule is a minimum, and how far past it
    the progress call came is the poll lag (polls stretch when the budget is full)."""

    @property
    def key(self) -> str:
        return f"poll:{self.command_id}:{self.seq}"


class PollDecision(BaseModel):
    """What one poll decided, recorded before anything is published: a redelivered poll
    finishes it (terminal event, next poll) without deciding again."""

    model_config = ConfigDict(frozen=True)

    state: Literal["decided", "done"] = "decided"
    """`done` once everything it decided was published and scheduled."""
    progress: str | None = None
    """The progress event (encoded), when the percentage or step changed."""
    terminal: str | None = None
    """The terminal event (encoded), when the job ended or following failed for good."""
    next: Poll | None = None
    """The next look at the job, when it goes on."""
    delay: float | None = None
    """Seconds until that look."""


_DONE = PollDecision(state="done").model_dump_json().encode()


def next_index(index: int, changed: bool, schedule_length: int) -> int:
    """The documented back-off: restart when the percentage changed, else move on, last repeats."""
    return 0 if changed else min(index + 1, schedule_length - 1)


class Api(Protocol):
    async def send(self, request: ApiRequest) -> ApiResponse: ...


class PollPublisher(Protocol):
    async def publish(self, event: EncodedEvent, reply_to: str | None) -> None: ...

    async def schedule_poll(self, poll: bytes, poll_id: str, delay: float | None) -> None:
        """Park the poll for `delay` seconds (None: straight to the poll queue)."""
        ...


class JobFollower:
    def __init__(
        self,
        api: Api,
        publisher: PollPublisher,
        outcomes: OutcomeStore,
        schedule: Sequence[float],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._tracing = tracing or Tracing()
        self._metrics = metrics or Metrics()
        self._api = api
        self._publisher = publisher
        self._outcomes = outcomes
        self._schedule = tuple(schedule)
        self._now = now

    async def start(
        self,
        job_id: str,
        command_id: str,
        correlation_id: str,
        reply_to: str | None,
        *,
        at_once: bool,
    ) -> None:
        """Begin following: poll now (`job.follow`) or after the first interval (submit)."""
        first = Poll(
            job_id=job_id,
            command_id=command_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
            trace=carrier(),
        )
        await self._schedule_poll(first, None if at_once else self._schedule[0])
        self._metrics.follows_started.inc()

    async def poll(self, body: bytes) -> None:
        try:
            poll = Poll.model_validate_json(body)
        except ValidationError:
            log.error("dropping a malformed poll message", size=len(body))
            return
        structlog.contextvars.bind_contextvars(
            command_id=poll.command_id, correlation_id=poll.correlation_id, job_id=poll.job_id
        )
        try:
            # The poll message's own context makes this a child of whoever scheduled it; the
            # link leads straight to the command that started the following.
            with self._tracing.span("job poll", links=link_to(poll.trace)):
                await self._poll(poll)
        finally:
            structlog.contextvars.unbind_contextvars("command_id", "correlation_id", "job_id")

    async def _poll(self, poll: Poll) -> None:
        claim = await claim_when_free(self._outcomes, poll.key)
        if isinstance(claim, Recorded):
            recorded = PollDecision.model_validate_json(claim.event)
            if recorded.state == "decided":
                await self._finish(poll, recorded)
                await self._outcomes.record(poll.key, "", _DONE, replace=True)
            return
        try:
            decision = await self._decide(poll)
        except BaseException:
            await self._outcomes.release(poll.key, claim.token)
            raise
        await self._outcomes.record(poll.key, claim.token, decision.model_dump_json().encode())
        if decision.progress is not None:
            progress = EncodedEvent.parse(decision.progress.encode())
            await self._publisher.publish(progress, poll.reply_to)
        await self._finish(poll, decision)
        await self._outcomes.record(poll.key, claim.token, _DONE, replace=True)

    async def _finish(self, poll: Poll, decision: PollDecision) -> None:
        if decision.terminal is not None:
            terminal = EncodedEvent.parse(decision.terminal.encode())
            await self._publisher.publish(terminal, poll.reply_to)
            self._metrics.follows_ended.labels(terminal.type).inc()
            log.info("job followed to its end", event_type=terminal.type)
        if decision.next is not None:
            await self._schedule_poll(decision.next, decision.delay)

    async def _schedule_poll(self, poll: Poll, delay: float | None) -> None:
        due = self._now().timestamp() + (delay or 0.0)
        body = poll.model_copy(update={"due": due}).model_dump_json().encode()
        await self._publisher.schedule_poll(body, poll.key, delay)

    async def _decide(self, poll: Poll) -> PollDecision:
        """Look at the job once; say which events to publish and when to look again."""
        progress_event: str | None = None
        path = PROGRESS_PATH.format(jobId=poll.job_id)
        try:
            response = await self._api.send(
                ApiRequest("GET", path, None, PROGRESS_PATH, priority="poll")
            )
            if poll.due is not None:
                self._metrics.poll_lag.observe(max(self._now().timestamp() - poll.due, 0.0))
            progress = _progress(response)
            changed = (progress["percentage"], progress["step"]) != (poll.percentage, poll.step)
            if changed:
                progress_event = self._event(
                    PROGRESS_EVENT, poll, {"jobId": poll.job_id, **progress}, response.attempts
                )
            if progress["state"] == "Over":
                job = await self._api.send(
                    ApiRequest(
                        "GET", JOB_PATH.format(jobId=poll.job_id), None, JOB_PATH, priority="poll"
                    )
                )
                terminal = TERMINAL_EVENTS.get(str(job.document.get("job", {}).get("state")))
                if terminal is not None:
                    ended = self._event(terminal, poll, job.document["job"], job.attempts)
                    return PollDecision(progress=progress_event, terminal=ended)
            index = next_index(poll.index, changed, len(self._schedule))
            next_poll = poll.model_copy(
                update={
                    "seq": poll.seq + 1,
                    "index": index,
                    "percentage": progress["percentage"],
                    "step": progress["step"],
                }
            )
        except WorkerError as error:
            if not error.retriable:
                return PollDecision(progress=progress_event, terminal=self._failure(poll, error))
            # The API is down for now: keep following, at the slow end of the schedule.
            log.warning("poll failed; trying again later", error_code=error.code)
            index = len(self._schedule) - 1
            next_poll = poll.model_copy(update={"seq": poll.seq + 1, "index": index})
        return PollDecision(progress=progress_event, next=next_poll, delay=self._schedule[index])

    def _event(self, event_type: str, poll: Poll, result: dict[str, Any], attempts: int) -> str:
        event = success(
            event_type,
            command_id=poll.command_id,
            correlation_id=poll.correlation_id,
            result=result,
            attempts=attempts,
            now=self._now(),
        )
        return EncodedEvent.of(event).body.decode()

    def _failure(self, poll: Poll, error: WorkerError) -> str:
        event = failure(
            FOLLOW_FAILED_EVENT,
            command_id=poll.command_id,
            correlation_id=poll.correlation_id,
            error=error,
            now=self._now(),
        )
        return EncodedEvent.of(event).body.decode()


def _progress(response: ApiResponse) -> dict[str, Any]:
    progress = response.document.get("jobProgress")
    if (
        not isinstance(progress, dict)
        or not isinstance(progress.get("percentage"), int)
        or progress.get("state") not in {"Unsubmitted", "Active", "Over"}
    ):
        raise ApiError(
            "The API's progress answer is not a jobProgress object.",
            status=response.status,
            code="UnexpectedResponse",
        )
    return {
        "percentage": progress["percentage"],
        "state": progress["state"],
        "step": str(progress.get("step") or ""),
    }
