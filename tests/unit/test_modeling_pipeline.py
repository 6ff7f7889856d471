"""The pipeline's part in Reality Modeling v2 commands, with hand-written fakes: a created job is
followed as a v2 job, and a cancel refused after a repeat is settled by one read."""

from __future__ import annotations

import json
from typing import Any

from service.api import ApiResponse
from service.commands import BY_ROUTING_KEY
from service.delivery import Delivery
from service.errors import ApiError
from service.job_kinds import ACCEPT_V2
from tests.fakes import FakeApi, FakePublisher, bootstrapped

ITWIN = "60805594-3e04-43b5-8fd8-5ccae0de23cc"
JOB = "5f0c3a51-0d3c-4a43-a0a5-3c6a3e7d9b10"
CREATION = {
    "type": "Tiling",
    "iTwinId": ITWIN,
    "specifications": {"inputs": {"scene": "s"}, "outputs": ["modelingReference"]},
}


def delivery(routing_key: str, document: Any, message_id: str = "c1") -> Delivery:
    return Delivery(
        body=json.dumps(document).encode(),
        routing_key=routing_key,
        message_id=message_id,
        reply_to="reply.to.me",
    )


def not_running(attempts: int) -> ApiError:
    error = ApiError("The job is not running.", status=422, code="InvalidRealityModelingRequest")
    error.attempts = attempts
    return error


async def test_a_created_job_is_followed_as_a_v2_job_from_the_first_interval() -> None:
    job = {"id": JOB, "state": "Queued", "type": "Tiling"}
    api, publisher = FakeApi(ApiResponse(201, {"job": job}, 1)), FakePublisher()
    worker = bootstrapped(api, publisher)
    await worker.pipeline.handle(
        BY_ROUTING_KEY["modeling.job.create"], delivery("modeling.job.create", CREATION)
    )
    [created] = publisher.published
    assert (created["type"], created["result"]) == ("modeling.job.created", job)
    [(first, delay)] = publisher.polls
    assert (first["job_id"], first["kind"], first["command_id"], first["reply_to"]) == (
        JOB, "modeling", "c1", "reply.to.me",
    )  # fmt: skip
    assert delay == 15.0, "the job was just queued: the first look is one interval later"
    [request] = api.requests
    assert (request.method, request.path, request.accept) == (
        "POST", "/reality-modeling/jobs", ACCEPT_V2,
    )  # fmt: skip


async def test_a_follow_command_starts_following_a_v2_job_now() -> None:
    progress = ApiResponse(200, {"progress": {"percentage": 10, "state": "Active"}}, 1)
    api, publisher = FakeApi(progress), FakePublisher()
    worker = bootstrapped(api, publisher)
    await worker.pipeline.handle(
        BY_ROUTING_KEY["modeling.job.follow"], delivery("modeling.job.follow", {"jobId": JOB})
    )
    assert publisher.published == [], "the job's own events will speak"
    [(first, delay)] = publisher.polls
    assert (first["kind"], delay) == ("modeling", None)


async def test_a_cancel_refused_after_a_repeat_is_accepted_when_the_job_is_being_cancelled() -> (
    None
):
    job = {"id": JOB, "state": "TerminatingOnCancel"}
    api = FakeApi(not_running(attempts=2), ApiResponse(200, {"job": job}, 1))
    publisher = FakePublisher()
    await bootstrapped(api, publisher).pipeline.handle(
        BY_ROUTING_KEY["modeling.job.cancel"], delivery("modeling.job.cancel", {"jobId": JOB})
    )
    [accepted] = publisher.published
    assert (accepted["type"], accepted["result"], accepted["attempts"]) == (
        "modeling.job.cancel.accepted", job, 3,
    )  # fmt: skip
    assert [(r.method, r.path) for r in api.requests] == [
        ("DELETE", f"/reality-modeling/jobs/{JOB}"),
        ("GET", f"/reality-modeling/jobs/{JOB}"),
    ]
    assert publisher.dead == []


async def test_a_cancel_refused_at_once_or_of_a_job_that_ended_otherwise_stays_refused() -> None:
    ended = ApiResponse(200, {"job": {"id": JOB, "state": "Success"}}, 1)
    for api in (FakeApi(not_running(attempts=1)), FakeApi(not_running(attempts=2), ended)):
        publisher = FakePublisher()
        await bootstrapped(api, publisher).pipeline.handle(
            BY_ROUTING_KEY["modeling.job.cancel"], delivery("modeling.job.cancel", {"jobId": JOB})
        )
        [failed] = publisher.published
        assert (failed["type"], failed["error"]["status"], failed["error"]["code"]) == (
            "modeling.job.cancel.failed", 422, "InvalidRealityModelingRequest",
        )  # fmt: skip
        assert publisher.dead == [], "a clean refusal is an outcome"
