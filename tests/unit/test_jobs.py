"""The job follower's decisions with hand-written fakes: progress, back-off, ends, redelivery."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.api import ApiResponse
from service.errors import ApiError, TransientError
from service.idempotency import MemoryOutcomes
from service.jobs import JobFollower, Poll
from tests.fakes import FakeApi, FakePublisher

SCHEDULE = (15.0, 30.0, 60.0)
JOB = {"id": "j1", "state": "success", "name": "job"}


def progress(percentage: int, state: str = "Active", step: str = "Calibration") -> ApiResponse:
    return ApiResponse(200, {"jobProgress": {"percentage": percentage, "state": state,
                                             "step": step}}, 1)  # fmt: skip


def job(state: str = "success") -> ApiResponse:
    return ApiResponse(200, {"job": {**JOB, "state": state}}, 1)


def poll(**fields: Any) -> bytes:
    return (
        Poll(job_id="j1", command_id="c1", correlation_id="k1", **fields).model_dump_json().encode()
    )


def follower(api: FakeApi, publisher: FakePublisher) -> JobFollower:
    return JobFollower(api, publisher, MemoryOutcomes(ttl=60, lease=5), SCHEDULE)


@pytest.mark.parametrize(("at_once", "delay"), [(True, None), (False, 15.0)])
async def test_following_starts_now_or_after_the_first_interval(
    at_once: bool, delay: float | None
) -> None:
    publisher = FakePublisher()
    await follower(FakeApi(), publisher).start("j1", "c1", "k1", "reply.x", at_once=at_once)
    [(first, scheduled)] = publisher.polls
    assert (first["job_id"], first["seq"], first["reply_to"], scheduled) == (
        "j1",
        1,
        "reply.x",
        delay,
    )


async def test_a_change_is_announced_and_the_schedule_restarts() -> None:
    api, publisher = FakeApi(progress(30)), FakePublisher()
    await follower(api, publisher).poll(poll(index=2, percentage=20, step="Calibration"))
    [event] = publisher.published
    assert event["type"] == "job.progress"
    assert event["result"] == {"jobId": "j1", "percentage": 30, "state": "Active",
                               "step": "Calibration"}  # fmt: skip
    assert (event["commandId"], event["correlationId"]) == ("c1", "k1")
    [(following, delay)] = publisher.polls
    assert (following["seq"], following["index"], following["percentage"], delay) == (
        2,
        0,
        30,
        15.0,
    )


async def test_no_change_is_quiet_and_the_interval_moves_on_the_last_repeating() -> None:
    api, publisher = FakeApi(progress(20), progress(20)), FakePublisher()
    jobs = follower(api, publisher)
    await jobs.poll(poll(index=1, percentage=20, step="Calibration"))
    await jobs.poll(poll(seq=2, index=2, percentage=20, step="Calibration"))
    assert publisher.published == []
    assert [(p["index"], delay) for p, delay in publisher.polls] == [(2, 60.0), (2, 60.0)]


@pytest.mark.parametrize(("state", "event_type"), [("success", "job.succeeded"),
                         ("failed", "job.failed"), ("cancelled", "job.cancelled")])  # fmt: skip
async def test_over_ends_with_the_jobs_own_state(state: str, event_type: str) -> None:
    api, publisher = FakeApi(progress(100, "Over", "Finalizing"), job(state)), FakePublisher()
    await follower(api, publisher).poll(poll(percentage=100, step="Finalizing"))
    [terminal] = publisher.published
    assert terminal["type"] == event_type
    assert terminal["result"]["state"] == state
    assert publisher.polls == [], "following ends"


async def test_a_retriable_failure_keeps_following_at_the_slow_end() -> None:
    api, publisher = FakeApi(TransientError("down", status=503)), FakePublisher()
    await follower(api, publisher).poll(poll())
    assert publisher.published == []
    [(following, delay)] = publisher.polls
    assert (following["seq"], delay) == (2, SCHEDULE[-1])


async def test_a_refusal_ends_the_following_with_its_failure_event() -> None:
    refused = ApiError("gone", status=404, code="JobNotFound")
    api, publisher = FakeApi(refused), FakePublisher()
    await follower(api, publisher).poll(poll())
    [failed] = publisher.published
    assert (failed["type"], failed["error"]["code"]) == ("job.follow.failed", "JobNotFound")
    assert publisher.polls == []


class CrashingOnce(FakePublisher):
    """Loses the broker once, right after the progress event went out."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed = False

    async def schedule_poll(self, poll: bytes, poll_id: str, delay: float | None) -> None:
        if not self.crashed:
            self.crashed = True
            raise ConnectionError("broker gone")
        await super().schedule_poll(poll, poll_id, delay)


async def test_a_redelivered_poll_finishes_its_decision_and_announces_nothing_twice() -> None:
    api, publisher = FakeApi(progress(30)), CrashingOnce()
    jobs = follower(api, publisher)
    with pytest.raises(ConnectionError):
        await jobs.poll(poll(percentage=20, step="Calibration"))
    await jobs.poll(poll(percentage=20, step="Calibration"))
    assert len(api.requests) == 1, "decided once"
    assert [event["type"] for event in publisher.published] == ["job.progress"], "announced once"
    assert len(publisher.polls) == 1, "the next poll is scheduled by the redelivery"
    await jobs.poll(poll(percentage=20, step="Calibration"))
    assert len(publisher.polls) == 1, "a poll already done is dropped"


async def test_a_malformed_poll_message_is_dropped() -> None:
    api, publisher = FakeApi(), FakePublisher()
    await follower(api, publisher).poll(json.dumps({"jobId": 5}).encode())
    assert (api.requests, publisher.published, publisher.polls) == ([], [], [])
