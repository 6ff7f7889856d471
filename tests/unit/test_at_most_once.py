"""A request that is not safe to repeat leaves at most once per command: the recovery point, the
takeover of an orphan, the lease kept while held, a delivery lost while its request is out.

The pipeline with hand-written fakes and records in memory (the Redis scripts are the same
decisions, tested against a real Redis in tests/integration/test_redis_limiter.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from service.api import ApiResponse, BeforeSending
from service.commands import BY_ROUTING_KEY, ApiRequest
from service.delivery import DELAYED_ATTEMPT_HEADER, REPLAY_HEADER, Delivery
from service.errors import RetriesExhausted
from service.idempotency import Busy, Leased, MemoryOutcomes, Orphaned, Recorded
from service.outages import DependencyDown
from tests.fakes import FakeApi, FakePublisher, bootstrapped

CREATE = BY_ROUTING_KEY["workspace.create"]
GET = BY_ROUTING_KEY["workspace.get"]
WORKSPACE = {"id": "w1", "name": "w"}


def created() -> ApiResponse:
    return ApiResponse(201, {"workspace": WORKSPACE}, 1)


def delivery(headers: dict[str, Any] | None = None, command_id: str = "c1") -> Delivery:
    return Delivery(
        body=b'{"name": "w"}',
        routing_key="workspace.create",
        message_id=command_id,
        headers=headers or {},
    )


class SlowApi(FakeApi):
    """Answers after `seconds`; `sent` is set once the request has left."""

    def __init__(self, seconds: float, *answers: ApiResponse | Exception) -> None:
        super().__init__(*answers)
        self.seconds = seconds
        self.sent = asyncio.Event()

    async def send(
        self, request: ApiRequest, *, before_sending: BeforeSending | None = None
    ) -> ApiResponse:
        async def left() -> None:
            if before_sending is not None:
                await before_sending()
            self.sent.set()
            await asyncio.sleep(self.seconds)

        return await super().send(request, before_sending=left)


async def test_a_takeover_of_a_command_marked_sent_concludes_it_without_a_second_request() -> None:
    """The worker that marked the POST sent died (its lease ended, no outcome): the next
    holder publishes OutcomeUnknown, dead-letters it, and records it for re-sends."""
    outcomes = MemoryOutcomes(ttl=60, lease=0.05)
    first = await outcomes.claim("c1")
    assert isinstance(first, Leased)
    assert await outcomes.mark_sent("c1", first.token)
    await asyncio.sleep(0.1)  # its holder is gone; the lease ends
    api, publisher = FakeApi(created()), FakePublisher()
    worker = bootstrapped(api, publisher, outcomes).pipeline
    await worker.handle(CREATE, delivery())
    await worker.handle(CREATE, delivery())
    assert api.requests == []
    assert [event["error"]["code"] for event in publisher.published] == ["OutcomeUnknown"] * 2
    assert publisher.dead == ["OutcomeUnknown"], "dead-lettered once, answered twice"


async def test_an_operators_replay_sends_an_orphan_again() -> None:
    outcomes = MemoryOutcomes(ttl=60, lease=0.05)
    first = await outcomes.claim("c1")
    assert isinstance(first, Leased)
    assert await outcomes.mark_sent("c1", first.token)
    await asyncio.sleep(0.1)
    api, publisher = FakeApi(created()), FakePublisher()
    worker = bootstrapped(api, publisher, outcomes).pipeline
    await worker.handle(CREATE, delivery({REPLAY_HEADER: True}))
    assert len(api.requests) == 1
    assert publisher.published[0]["type"] == "workspace.created"


async def test_a_safe_request_of_an_orphan_is_sent_again() -> None:
    """Only requests that are not safe to repeat are marked: a GET's takeover just works."""
    outcomes = MemoryOutcomes(ttl=60, lease=0.05)
    first = await outcomes.claim("g1")
    assert isinstance(first, Leased)
    await asyncio.sleep(0.1)
    api = FakeApi(ApiResponse(200, {"workspace": WORKSPACE}, 1))
    publisher = FakePublisher()
    worker = bootstrapped(api, publisher, outcomes).pipeline
    get = Delivery(body=b'{"workspaceId": "w1"}', routing_key="workspace.get", message_id="g1")
    await worker.handle(GET, get)
    assert len(api.requests) == 1
    recorded = await outcomes.claim("g1")
    assert isinstance(recorded, Recorded)
    assert json.loads(recorded.event) == publisher.published[0]


async def test_a_failure_that_proves_nothing_happened_leaves_no_mark() -> None:
    """A retriable failure (503s) is delayed; its delayed delivery sends the POST again."""
    outcomes = MemoryOutcomes(ttl=60, lease=5)
    down = RetriesExhausted("down", status=503)
    api, publisher = FakeApi(down, created()), FakePublisher()
    worker = bootstrapped(api, publisher, outcomes, retry_delays=[10.0]).pipeline
    await worker.handle(CREATE, delivery())
    assert publisher.delayed == [(1, 10.0)]
    await worker.handle(CREATE, delivery({DELAYED_ATTEMPT_HEADER: 1}))
    assert len(api.requests) == 2
    assert publisher.published[0]["type"] == "workspace.created"


async def test_a_dependency_down_before_the_send_leaves_no_mark() -> None:
    """The breaker opened (or Redis went) before the request left: it is sent once it is back."""
    outcomes = MemoryOutcomes(ttl=60, lease=5)
    api, publisher = FakeApi(DependencyDown("redis"), created()), FakePublisher()
    worker = bootstrapped(api, publisher, outcomes).pipeline
    await worker.handle(CREATE, delivery())
    assert len(api.requests) == 1
    assert publisher.published[0]["type"] == "workspace.created"


async def test_a_lease_is_renewed_while_its_command_is_held() -> None:
    """An answer slower than the lease: another claimant stays out the whole time."""
    outcomes = MemoryOutcomes(ttl=60, lease=0.3)
    api, publisher = SlowApi(1.0, created()), FakePublisher()
    worker = bootstrapped(api, publisher, outcomes).pipeline
    work = asyncio.create_task(worker.handle(CREATE, delivery()))
    await api.sent.wait()
    for _ in range(8):
        assert isinstance(await outcomes.claim("c1"), Busy)
        await asyncio.sleep(0.1)
    await work
    assert [event["type"] for event in publisher.published] == ["workspace.created"]


async def test_a_delivery_lost_while_its_request_is_out_finishes_the_command() -> None:
    """The handler is cancelled (its channel closed) after the POST left: the answer is
    recorded, and the next delivery publishes it without a second request."""
    outcomes = MemoryOutcomes(ttl=60, lease=5)
    api, publisher = SlowApi(0.3, created()), FakePublisher()
    worker = bootstrapped(api, publisher, outcomes).pipeline
    handler = asyncio.create_task(worker.handle(CREATE, delivery()))
    await api.sent.wait()
    handler.cancel()
    await asyncio.gather(handler, return_exceptions=True)
    assert len(worker.detached.tasks) == 1
    await worker.handle(CREATE, delivery())  # waits for the lease, then answers from the record
    assert len(api.requests) == 1
    assert {event["type"] for event in publisher.published} == {"workspace.created"}
    assert worker.detached.tasks == set()


async def test_a_delivery_lost_before_its_request_left_lets_go_at_once() -> None:
    """Cancelled in the budget wait: nothing was sent, the lease goes and no mark stays."""
    outcomes = MemoryOutcomes(ttl=60, lease=5)
    started = asyncio.Event()

    class WaitingApi(FakeApi):
        async def send(
            self, request: ApiRequest, *, before_sending: BeforeSending | None = None
        ) -> ApiResponse:
            started.set()
            await asyncio.sleep(10)  # the budget wait
            return await super().send(request, before_sending=before_sending)

    worker = bootstrapped(WaitingApi(created()), FakePublisher(), outcomes).pipeline
    handler = asyncio.create_task(worker.handle(CREATE, delivery()))
    await started.wait()
    handler.cancel()
    await asyncio.gather(handler, return_exceptions=True)
    await asyncio.sleep(0)
    assert worker.detached.tasks == set()
    assert isinstance(await outcomes.claim("c1"), Leased), "free, and not an orphan"


async def test_shutdown_cancels_detached_commands_and_their_mark_stays() -> None:
    outcomes = MemoryOutcomes(ttl=60, lease=5)
    api, publisher = SlowApi(30.0, created()), FakePublisher()
    worker = bootstrapped(api, publisher, outcomes).pipeline
    handler = asyncio.create_task(worker.handle(CREATE, delivery()))
    await api.sent.wait()
    handler.cancel()
    await asyncio.gather(handler, return_exceptions=True)
    await worker.detached.finish(within=0.1)
    assert worker.detached.tasks == set()
    assert isinstance(await outcomes.claim("c1"), Orphaned), "released, its mark kept"


async def test_a_lease_lost_before_the_send_sends_nothing_and_waits_for_the_holder() -> None:
    """Our lease ended unseen (the clock jumped past it) and another holder took the command:
    our mark is refused, nothing is sent, and the other holder's outcome is the answer."""
    now = [0.0]
    outcomes = MemoryOutcomes(ttl=60, lease=5, clock=lambda: now[0])

    class TakenOver(FakeApi):
        async def send(
            self, request: ApiRequest, *, before_sending: BeforeSending | None = None
        ) -> ApiResponse:
            now[0] += 10.0
            other = await outcomes.claim("c1")
            assert isinstance(other, Leased)
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, lambda: loop.create_task(outcomes.record("c1", other.token, b"")))
            return await super().send(request, before_sending=before_sending)

    api, publisher = TakenOver(created()), FakePublisher()
    worker = bootstrapped(api, publisher, outcomes).pipeline
    await worker.handle(CREATE, delivery())
    assert api.requests == []
    assert publisher.published == [], "the other holder's (empty) record is the outcome"


APPLICATION = BY_ROUTING_KEY["application.create"]
MINE = {"id": "a1", "displayName": "Mine", "version": "2"}


def application() -> Delivery:
    return Delivery(
        body=b'{"displayName": "Mine", "version": "2"}',
        routing_key="application.create",
        message_id="a1",
    )


async def orphan(outcomes: MemoryOutcomes, command_id: str) -> None:
    """A holder that marked the command's request sent, then died."""
    first = await outcomes.claim(command_id)
    assert isinstance(first, Leased)
    assert await outcomes.mark_sent(command_id, first.token)
    await asyncio.sleep(0.1)


def page(*applications: dict[str, Any], next_token: str | None = None) -> ApiResponse:
    document: dict[str, Any] = {"applications": list(applications)}
    if next_token is not None:
        href = f"https://api.example/library/applications?continuationToken={next_token}"
        document["_links"] = {"next": {"href": href}}
    return ApiResponse(200, document, 1)


async def test_an_orphaned_create_the_api_can_tell_about_is_looked_up_not_sent() -> None:
    """An application is found by its name and version, on whichever page it is."""
    outcomes = MemoryOutcomes(ttl=60, lease=0.05)
    await orphan(outcomes, "a1")
    other = {"id": "a0", "displayName": "Mine", "version": "1"}
    api = FakeApi(page(other, next_token="p2"), page(MINE))
    publisher = FakePublisher()
    await bootstrapped(api, publisher, outcomes).pipeline.handle(APPLICATION, application())
    assert [(r.method, r.path, r.query) for r in api.requests] == [
        ("GET", "/library/applications", ()),
        ("GET", "/library/applications", (("continuationToken", "p2"),)),
    ]
    assert publisher.published[0]["type"] == "application.created"
    assert publisher.published[0]["result"] == MINE
    assert publisher.dead == []


async def test_an_orphaned_create_not_found_is_an_unknown_outcome() -> None:
    outcomes = MemoryOutcomes(ttl=60, lease=0.05)
    await orphan(outcomes, "a1")
    api, publisher = FakeApi(page()), FakePublisher()
    await bootstrapped(api, publisher, outcomes).pipeline.handle(APPLICATION, application())
    assert [r.method for r in api.requests] == ["GET"]
    error = publisher.published[0]["error"]
    assert error["code"] == "OutcomeUnknown"
    assert "found 0" in error["message"]
    assert publisher.dead == ["OutcomeUnknown"]


def test_a_repository_is_looked_up_by_its_class_and_uri_in_its_itwin() -> None:
    spec = BY_ROUTING_KEY["repository.create"]
    assert spec.lookup is not None
    command = spec.parse(
        b'{"iTwinId": "t-1", "class": "GeographicInformationSystem",'
        b' "subClass": "WebMapService", "uri": "https://maps.example/wms"}'
    )
    request = spec.lookup.request(command)
    assert (request.method, request.path) == ("GET", "/itwins/t-1/repositories")
    assert request.query == (
        ("class", "GeographicInformationSystem"),
        ("subClass", "WebMapService"),
    )
    made = {"id": "r1", "class": "GeographicInformationSystem", "subClass": "WebMapService",
            "uri": "https://maps.example/wms", "displayName": "x"}  # fmt: skip
    elsewhere = {**made, "id": "r2", "uri": "https://maps.example/other"}
    assert spec.lookup.found(command, {"repositories": [elsewhere, made]}) == [made]


async def test_a_job_is_followed_after_its_command_is_recorded_and_again_on_a_redelivery() -> None:
    """The worker stops between the record of `job.submit` and the start of following: the
    next delivery answers from the record and starts following (a second start is harmless)."""

    class StopsBeforeFollowing(FakePublisher):
        async def schedule_poll(self, poll: bytes, poll_id: str, delay: float | None) -> None:
            raise RuntimeError("the worker stopped here")

    outcomes = MemoryOutcomes(ttl=60, lease=5)
    submitted = ApiResponse(200, {"job": {"id": "j1", "state": "active"}}, 1)
    submit = Delivery(body=b'{"jobId": "j1"}', routing_key="job.submit", message_id="s1")
    spec = BY_ROUTING_KEY["job.submit"]
    with pytest.raises(RuntimeError):
        await bootstrapped(FakeApi(submitted), StopsBeforeFollowing(), outcomes).pipeline.handle(
            spec, submit
        )
    api, publisher = FakeApi(), FakePublisher()
    await bootstrapped(api, publisher, outcomes).pipeline.handle(spec, submit)
    assert api.requests == [], "answered from the record"
    assert [event["type"] for event in publisher.published] == ["job.submitted"]
    assert [poll["job_id"] for poll, _ in publisher.polls] == ["j1"]
