"""Following a job until it ends: progress events, then one terminal event.

One follower for both API generations: what differs between a ContextCapture job and a Reality
Modeling v2 job (paths, Accept, the progress answer, which states end it, which event each end
is, the messages of a failed v2 job) is its `JobKind` (`service.job_kinds`), named in the poll.

The schedule lives in the broker, not in memory: each next poll is a message parked in a delay
queue, so any replica can take it, a crash or redeploy loses no followed job, and following
10 000 jobs costs the worker nothing while they wait.

A poll is idempotent by its id (`poll:<command id>:<seq>`). Its decision is recorded before
anything is published; a redelivered poll finishes what the first one started (terminal event,
next poll) but never publishes its progress event again, and a poll already done is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote

import structlog
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from service.api import ApiResponse
from service.commands import ApiRequest
from service.errors import ApiError, WorkerError
from service.events import EncodedEvent, SuccessEvent, failure, new_event_id, oversized, success
from service.idempotency import OutcomeStore, Recorded, claim_when_free
from service.job_kinds import (
    CONTEXTCAPTURE_JOBS,
    JOB_KINDS,
    JobKind,
    JobKindName,
)
from service.limits import Limits
from service.metrics import Metrics
from service.tracing import Tracing, carrier, link_to

log = structlog.get_logger("itwin_worker.jobs")

FOLLOW_FAILED_EVENT = CONTEXTCAPTURE_JOBS.follow_failed_event
PROGRESS_EVENTS = frozenset(kind.progress_event for kind in JOB_KINDS.values())
TERMINAL_EVENTS = frozenset(
    event for kind in JOB_KINDS.values() for event in kind.terminal_events.values()
)


def _changes(kind: JobKind) -> str:
    fields = ", ".join(("jobId", *kind.progress_fields))
    return (
        f"A followed job's {' or '.join(kind.change_fields)} changed: `result` is "
        f"`{{{fields}}}`; `commandId` is the command that started the following."
    )


def _end(kind: JobKind, state: str) -> str:
    described = (
        f"A followed job ended with state `{state}`: `result` is the final job object; exactly "
        "one terminal event per followed job."
    )
    if state in kind.messages_for:
        described += " `messages` is the job's `{errors, warnings}` (null if the API refused)."
    return described


JOB_EVENTS = {
    event: description
    for kind in JOB_KINDS.values()
    for event, description in (
        (kind.progress_event, _changes(kind)),
        *((event, _end(kind, state)) for state, event in kind.terminal_events.items()),
    )
}
"""Events of a followed job, beyond each command's own."""


class JobMessages(BaseModel):
    """Why a v2 job failed: the API's message objects (`code`, `title`, `message`, `params`)."""

    errors: list[dict[str, Any]]
    warnings: list[dict[str, Any]]


class EndedWithMessagesEvent(SuccessEvent):
    """A terminal event that also carries the job's messages (a failed v2 job)."""

    messages: JobMessages | None = Field(
        description="The job's messages, read once when it ended; null if the API refused."
    )


JOB_EVENT_MODELS: Mapping[str, type[SuccessEvent]] = {
    event: EndedWithMessagesEvent
    for kind in JOB_KINDS.values()
    for state, event in kind.terminal_events.items()
    if state in kind.messages_for
}
"""The model of each job event that is not a plain `SuccessEvent`."""


class Poll(BaseModel):
    """The next look at a job: what was last seen, and where in the back-off schedule we are."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    command_id: str
    correlation_id: str
    reply_to: str | None = None
    kind: JobKindName = CONTEXTCAPTURE_JOBS.name
    """How the job is followed (polls parked before v2 jobs existed are ContextCapture's)."""
    seq: int = 1
    index: int = 0
    percentage: int | None = None
    step: str | None = None
    state: str | None = None
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
        max_event_bytes: int = Limits.event_bytes,
    ) -> None:
        self._tracing = tracing or Tracing()
        self._max_event_bytes = max_event_bytes
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
        kind: JobKind = CONTEXTCAPTURE_JOBS,
    ) -> None:
        """Begin following: poll now (a follow command) or after the first interval (a job just
        submitted or created)."""
        first = Poll(
            job_id=job_id,
            command_id=command_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
            kind=kind.name,
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
        kind = JOB_KINDS[poll.kind]
        progress_event: str | None = None
        try:
            response = await self._read(kind, kind.progress_path, poll)
            if poll.due is not None:
                self._metrics.poll_lag.observe(max(self._now().timestamp() - poll.due, 0.0))
            progress = _progress(response, kind)
            seen = tuple(progress[name] for name in kind.change_fields)
            changed = seen != tuple(getattr(poll, name) for name in kind.change_fields)
            if changed:
                progress_event = self._event(
                    kind.progress_event,
                    poll,
                    {"jobId": poll.job_id, **progress},
                    response.status,
                    response.attempts,
                )
            if progress["state"] in kind.ended_states:
                terminal = await self._ended(kind, poll)
                if terminal is not None:
                    return PollDecision(progress=progress_event, terminal=terminal)
            index = next_index(poll.index, changed, len(self._schedule))
            next_poll = poll.model_copy(update={"seq": poll.seq + 1, "index": index, **progress})
        except WorkerError as error:
            if not error.retriable:
                ended = self._failure(kind, poll, error)
                return PollDecision(progress=progress_event, terminal=ended)
            # The API is down for now: keep following, at the slow end of the schedule.
            log.warning("poll failed; trying again later", error_code=error.code)
            index = len(self._schedule) - 1
            next_poll = poll.model_copy(update={"seq": poll.seq + 1, "index": index})
        return PollDecision(progress=progress_event, next=next_poll, delay=self._schedule[index])

    async def _read(self, kind: JobKind, template: str, poll: Poll) -> ApiResponse:
        # The id came from a validated command or from the API's answer (checked then); quoted
        # all the same, so no id can ever add a path segment.
        path = template.format(jobId=quote(poll.job_id, safe=""))
        return await self._api.send(
            ApiRequest("GET", path, None, template, priority="poll", accept=kind.accept)
        )

    async def _ended(self, kind: JobKind, poll: Poll) -> str | None:
        """The terminal event of a job whose progress says it ended; None while the job itself
        does not say so yet (it is looked at again later)."""
        read = await self._read(kind, kind.job_path, poll)
        job = read.document.get("job")
        if not isinstance(job, dict):
            return None
        state = job.get("state")
        terminal = kind.terminal_events.get(state) if isinstance(state, str) else None
        if terminal is None:
            return None
        if state not in kind.messages_for or kind.messages_path is None:
            return self._event(terminal, poll, job, read.status, read.attempts)
        messages, attempts = await self._messages(kind, poll)
        event = EndedWithMessagesEvent(
            **self._fields(terminal, poll, read.attempts + attempts), result=job, messages=messages
        )
        return self._encoded(event, read.status)

    async def _messages(self, kind: JobKind, poll: Poll) -> tuple[JobMessages | None, int]:
        """The job's messages and the attempts they took. A refusal, or an answer of another
        shape, still ends the job (the job says it failed), without them; a failure that may
        pass is raised, so the whole look is taken again later."""
        assert kind.messages_path is not None  # only kinds with messages get here
        try:
            read = await self._read(kind, kind.messages_path, poll)
        except WorkerError as error:
            if error.retriable:
                raise
            log.warning("the job's messages were refused", error_code=error.code)
            return None, error.attempts
        try:
            return JobMessages.model_validate(read.document.get("messages")), read.attempts
        except ValidationError:
            log.warning("the job's messages are not the page's shape")
            return None, read.attempts

    def _fields(self, event_type: str, poll: Poll, attempts: int) -> dict[str, Any]:
        return {
            "event_id": new_event_id(),
            "type": event_type,
            "command_id": poll.command_id,
            "correlation_id": poll.correlation_id,
            "occurred_at": self._now(),
            "attempts": attempts,
        }

    def _event(
        self, event_type: str, poll: Poll, result: dict[str, Any], status: int, attempts: int
    ) -> str:
        event = success(
            event_type,
            command_id=poll.command_id,
            correlation_id=poll.correlation_id,
            result=result,
            attempts=attempts,
            now=self._now(),
        )
        return self._encoded(event, status)

    def _encoded(self, event: SuccessEvent, status: int) -> str:
        """The event, encoded; `ResultTooLarge` (which ends the following) if it would not fit
        in MAX_EVENT_BYTES."""
        too_large = oversized(event, self._max_event_bytes, status)
        if too_large is not None:
            raise too_large
        return EncodedEvent.of(event).body.decode()

    def _failure(self, kind: JobKind, poll: Poll, error: WorkerError) -> str:
        error = error.settled()
        event = failure(
            kind.follow_failed_event,
            command_id=poll.command_id,
            correlation_id=poll.correlation_id,
            error=error,
            now=self._now(),
        )
        return EncodedEvent.of(event).body.decode()


def _progress(response: ApiResponse, kind: JobKind) -> dict[str, Any]:
    """The progress fields of the kind's answer; a whole percentage written as 50.0 counts."""
    progress = response.document.get(kind.progress_key)
    percentage = progress.get("percentage") if isinstance(progress, dict) else None
    if isinstance(percentage, float) and percentage.is_integer():
        percentage = int(percentage)
    if (
        not isinstance(progress, dict)
        or not isinstance(percentage, int)
        or isinstance(percentage, bool)
        or progress.get("state") not in kind.progress_states
    ):
        raise ApiError(
            f"The API's progress answer is not a {kind.progress_key} object.",
            status=response.status,
            code="UnexpectedResponse",
        )
    fields = {"percentage": percentage, "state": progress["state"]}
    if "step" in kind.progress_fields:
        fields["step"] = str(progress.get("step") or "")
    return fields
