"""The job follower's side of the budget: its calls are polls, each poll carries when it was
due, and how late it came is observed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from service.api import ApiResponse
from service.commands import ApiRequest
from service.events import EncodedEvent
from service.idempotency import MemoryOutcomes
from service.jobs import JobFollower
from service.metrics import Metrics

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Api:
    def __init__(self) -> None:
        self.requests: list[ApiRequest] = []

    async def send(self, request: ApiRequest) -> ApiResponse:
        self.requests.append(request)
        progress = {"percentage": 40, "state": "Active", "step": "Processing"}
        return ApiResponse(200, {"jobProgress": progress}, 1)


class Publisher:
    def __init__(self) -> None:
        self.polls: list[tuple[bytes, float | None]] = []

    async def publish(self, event: EncodedEvent, reply_to: str | None) -> None:
        return None

    async def schedule_poll(self, poll: bytes, poll_id: str, delay: float | None) -> None:
        self.polls.append((poll, delay))


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


async def test_polls_are_of_the_poll_class_carry_their_due_time_and_report_their_lag() -> None:
    api, publisher, clock, metrics = Api(), Publisher(), Clock(), Metrics()
    follower = JobFollower(
        api, publisher, MemoryOutcomes(ttl=60, lease=5), (15.0, 30.0), clock, metrics=metrics
    )
    await follower.start("j1", "c1", "c1", None, at_once=False)
    [(first, delay)] = publisher.polls
    poll: dict[str, Any] = json.loads(first)
    assert delay == 15.0
    assert poll["due"] == (START + timedelta(seconds=15)).timestamp()
    sample = metrics.registry.get_sample_value
    assert sample("itwin_worker_job_follows_started_total") == 1

    clock.now = START + timedelta(seconds=15 + 4.5)  # the budget kept it waiting 4.5 s
    await follower.poll(first)
    assert [request.priority for request in api.requests] == ["poll"]
    assert sample("itwin_worker_job_poll_lag_seconds_count") == 1
    assert sample("itwin_worker_job_poll_lag_seconds_sum") == 4.5
    second = json.loads(publisher.polls[-1][0])
    assert second["due"] == (clock.now + timedelta(seconds=15)).timestamp()
