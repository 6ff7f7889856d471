"""Hand-written fakes of the worker's adapters, and the bootstrap built around them.

The unit tests get the same graph the worker runs (`service.app.Worker`), with an API and a
publisher of their own; nothing connects to a broker, Redis or HTTP server.
"""

from __future__ import annotations

import json
from typing import Any

from service.api import ApiResponse, BeforeSending
from service.app import Worker
from service.commands import ApiRequest
from service.delivery import Delivery
from service.errors import WorkerError
from service.events import EncodedEvent
from service.idempotency import MemoryOutcomes, OutcomeStore
from service.settings import load_settings


class FakeApi:
    def __init__(self, *answers: ApiResponse | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[ApiRequest] = []

    async def send(
        self, request: ApiRequest, *, before_sending: BeforeSending | None = None
    ) -> ApiResponse:
        """The next answer: an `ApiResponse` or a `WorkerError` comes after the request left
        (`before_sending` runs first, as in the real client); any other exception (a crash,
        `DependencyDown`) before it left."""
        answer = self.answers.pop(0)
        if isinstance(answer, Exception) and not isinstance(answer, WorkerError):
            raise answer
        if before_sending is not None:
            await before_sending()
        self.requests.append(request)
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.dead: list[str] = []
        self.delayed: list[tuple[int, float]] = []
        self.polls: list[tuple[dict[str, Any], float | None]] = []

    async def publish(self, event: EncodedEvent, reply_to: str | None) -> None:
        self.published.append(json.loads(event.body))

    async def dead_letter(
        self, delivery: Delivery, event: EncodedEvent, reason: WorkerError
    ) -> None:
        self.dead.append(reason.code)

    async def delay(self, delivery: Delivery, attempt: int, seconds: float) -> None:
        self.delayed.append((attempt, seconds))

    async def schedule_poll(self, poll: bytes, poll_id: str, delay: float | None) -> None:
        self.polls.append((json.loads(poll), delay))


def bootstrapped(
    api: FakeApi, publisher: FakePublisher, outcomes: OutcomeStore | None = None, **settings: Any
) -> Worker:
    """The worker's graph around these fakes: no delays, back-offs of a millisecond."""
    return Worker(
        load_settings(
            **{
                "client_id": "id",
                "client_secret": "secret",
                "retry_delays": [],
                "retry_initial_seconds": 0.001,
                "retry_max_seconds": 0.001,
                "job_poll_schedule": [15.0, 30.0],
                **settings,
            }
        ),
        api=api,
        publisher=publisher,
        outcomes=outcomes or MemoryOutcomes(ttl=60, lease=5),
    )
