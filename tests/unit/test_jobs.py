"""The job follower's decisions with hand-written fakes: progress, back-off, ends, redelivery."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.api import ApiResponse
from service.errors import ApiError, TransientError
from service.idempotency import MemoryOutcomes
from service.job_kinds import ACCEPT_V1, ACCEPT_V2, MODELING_JOBS
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


# Reality Modeling v2 jobs: the same follower, told by the poll's kind what differs.

MODELING_JOB = {"id": "j1", "state": "Success", "type": "Reconstruction"}


def v2_progress(percentage: int | float, state: str) -> ApiResponse:
    return ApiResponse(200, {"progress": {"percentage": percentage, "state": state}}, 1)


def v2_job(state: str) -> ApiResponse:
    return ApiResponse(200, {"job": {**MODELING_JOB, "state": state}}, 1)


def v2_poll(**fields: Any) -> bytes:
    return poll(kind="modeling", **fields)


async def test_a_v2_job_is_followed_on_its_own_paths_with_the_v2_accept() -> None:
    publisher = FakePublisher()
    await follower(FakeApi(), publisher).start(
        "j1", "c1", "k1", None, at_once=False, kind=MODELING_JOBS
    )
    [(first, delay)] = publisher.polls
    assert (first["kind"], delay) == ("modeling", SCHEDULE[0])
    api = FakeApi(v2_progress(0, "Queued"))
    await follower(api, publisher).poll(json.dumps(first).encode())
    [request] = api.requests
    assert (request.path, request.accept, request.priority) == (
        "/reality-modeling/jobs/j1/progress", ACCEPT_V2, "poll",
    )  # fmt: skip
    [event] = publisher.published
    assert event["type"] == "modeling.job.progress"
    assert event["result"] == {"jobId": "j1", "percentage": 0, "state": "Queued"}, "no step"


async def test_a_v2_state_change_at_the_same_percentage_is_announced_and_is_not_an_end() -> None:
    api, publisher = FakeApi(v2_progress(40, "TerminatingOnCancel")), FakePublisher()
    await follower(api, publisher).poll(v2_poll(percentage=40, state="Active"))
    [event] = publisher.published
    assert event["result"] == {"jobId": "j1", "percentage": 40, "state": "TerminatingOnCancel"}
    [(following, _)] = publisher.polls
    assert (following["state"], following["index"]) == ("TerminatingOnCancel", 0)
    assert len(api.requests) == 1, "TerminatingOnCancel is not terminal: the job is not read"


async def test_a_whole_percentage_written_as_a_float_counts_as_the_same() -> None:
    api, publisher = FakeApi(v2_progress(40.0, "Active")), FakePublisher()
    await follower(api, publisher).poll(v2_poll(percentage=40, state="Active"))
    assert publisher.published == []


@pytest.mark.parametrize(
    ("state", "event_type"),
    [("Success", "modeling.job.succeeded"), ("Cancelled", "modeling.job.cancelled")],
)
async def test_a_v2_job_ends_with_its_own_states_event(state: str, event_type: str) -> None:
    api = FakeApi(v2_progress(100, state), v2_job(state))
    publisher = FakePublisher()
    await follower(api, publisher).poll(v2_poll(percentage=100, state="Active"))
    progress, terminal = publisher.published
    assert progress["type"] == "modeling.job.progress"
    assert (terminal["type"], terminal["result"]["state"]) == (event_type, state)
    assert "messages" not in terminal
    assert [r.path for r in api.requests] == [
        "/reality-modeling/jobs/j1/progress", "/reality-modeling/jobs/j1",
    ]  # fmt: skip
    assert publisher.polls == []


async def test_a_failed_v2_job_ends_with_its_messages_read_once() -> None:
    messages = {
        "errors": [{"code": "InputData_Invalid", "title": "Invalid input data",
                    "message": "Invalid input data (\"%1\")", "params": ["Sample_scan"]}],
        "warnings": [],
    }  # fmt: skip
    api = FakeApi(
        v2_progress(60, "Failed"), v2_job("Failed"), ApiResponse(200, {"messages": messages}, 2)
    )
    publisher = FakePublisher()
    await follower(api, publisher).poll(v2_poll(percentage=60, state="TerminatingOnFailure"))
    [progress, terminal] = publisher.published
    assert progress["result"]["state"] == "Failed"
    assert terminal["type"] == "modeling.job.failed"
    assert terminal["result"] == {**MODELING_JOB, "state": "Failed"}, "the final job, unchanged"
    assert terminal["messages"] == messages
    assert terminal["attempts"] == 3, "the job's read and the messages' two attempts"
    assert api.requests[-1].path == "/reality-modeling/jobs/j1/messages"
    assert all(r.accept == ACCEPT_V2 for r in api.requests)


async def test_messages_the_api_refuses_still_end_the_failed_job_without_them() -> None:
    refused = ApiError("gone", status=404, code="JobNotFound")
    api = FakeApi(v2_progress(60, "Failed"), v2_job("Failed"), refused)
    publisher = FakePublisher()
    await follower(api, publisher).poll(v2_poll(percentage=60, state="Failed"))
    [terminal] = publisher.published
    assert (terminal["type"], terminal["messages"]) == ("modeling.job.failed", None)


async def test_messages_that_cannot_be_read_now_are_read_with_the_job_again_later() -> None:
    api = FakeApi(v2_progress(60, "Failed"), v2_job("Failed"), TransientError("down", status=503))
    publisher = FakePublisher()
    await follower(api, publisher).poll(v2_poll(percentage=60, state="Failed"))
    assert publisher.published == []
    [(following, delay)] = publisher.polls
    assert (following["seq"], delay) == (2, SCHEDULE[-1])


async def test_a_v2_progress_of_another_shape_ends_the_following_with_its_failure() -> None:
    api, publisher = FakeApi(progress(30)), FakePublisher()
    await follower(api, publisher).poll(v2_poll())
    [failed] = publisher.published
    assert (failed["type"], failed["error"]["code"]) == (
        "modeling.job.follow.failed", "UnexpectedResponse",
    )  # fmt: skip


async def test_a_poll_parked_before_v2_existed_is_a_contextcapture_poll() -> None:
    parked = {"job_id": "j1", "command_id": "c1", "correlation_id": "k1", "seq": 3, "index": 1,
              "percentage": 20, "step": "Calibration", "trace": {}}  # fmt: skip
    api, publisher = FakeApi(progress(30)), FakePublisher()
    await follower(api, publisher).poll(json.dumps(parked).encode())
    assert api.requests[0].path == "/contextcapture/jobs/j1/progress"
    assert api.requests[0].accept == ACCEPT_V1
    [event] = publisher.published
    assert event["type"] == "job.progress"


async def test_a_final_job_too_large_for_an_event_ends_the_following_saying_so() -> None:
    big = ApiResponse(200, {"job": {**JOB, "description": "d" * 70_000}}, 1)
    api, publisher = FakeApi(progress(100, "Over"), big), FakePublisher()
    jobs = JobFollower(
        api, publisher, MemoryOutcomes(ttl=60, lease=5), SCHEDULE, max_event_bytes=65536
    )
    await jobs.poll(poll(percentage=90, step="Calibration"))
    progressed, ended = publisher.published
    assert progressed["type"] == "job.progress"
    assert ended["type"] == "job.follow.failed"
    error = ended["error"]
    assert (error["code"], error["status"], error["target"]) == ("ResultTooLarge", 200, "j1")
    assert "MAX_EVENT_BYTES (65536 bytes)" in error["message"]
    assert publisher.polls == [], "the following ended"
