"""The pipeline's decisions with small hand-written fakes: no broker, no HTTP."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import field_validator
from redis.exceptions import ConnectionError as RedisConnectionError

from service.api import ApiResponse
from service.commands import BY_ROUTING_KEY
from service.delivery import DELAYED_ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, Delivery
from service.errors import ApiError, RetriesExhausted
from service.idempotency import Claim, MemoryOutcomes
from service.jobs import JobFollower
from service.messages import CreateWorkspace
from service.metrics import Metrics
from service.outages import DependencyDown, Outages
from service.pipeline import DeliveryPolicy, Pipeline
from tests.fakes import FakeApi, FakePublisher, bootstrapped

WORKSPACE = {"id": "w1", "name": "w", "createdDateTime": "2026-01-01T00:00:00Z"}


def created() -> ApiResponse:
    return ApiResponse(201, {"workspace": WORKSPACE}, 1)


def delivery(message_id: str | None = "c1", headers: dict[str, Any] | None = None) -> Delivery:
    return Delivery(
        body=b'{"name": "w"}',
        routing_key="workspace.create",
        message_id=message_id,
        headers=headers or {},
    )


def pipeline(
    api: FakeApi, publisher: FakePublisher, outcomes: MemoryOutcomes | None = None, **settings: Any
) -> Pipeline:
    return bootstrapped(api, publisher, outcomes, **settings).pipeline


SPEC = BY_ROUTING_KEY["workspace.create"]


async def test_success_is_published_and_a_resend_is_answered_from_the_record() -> None:
    api, publisher = FakeApi(created()), FakePublisher()
    worker = pipeline(api, publisher)
    await worker.handle(SPEC, delivery())
    await worker.handle(SPEC, delivery())
    assert len(api.requests) == 1
    assert publisher.published[0] == publisher.published[1]
    assert publisher.published[0]["result"] == WORKSPACE


async def test_commands_without_an_id_are_never_deduplicated() -> None:
    api, publisher = FakeApi(created(), created()), FakePublisher()
    worker = pipeline(api, publisher)
    await worker.handle(SPEC, delivery(message_id=None))
    await worker.handle(SPEC, delivery(message_id=None))
    assert len(api.requests) == 2
    assert publisher.published[0]["commandId"] != publisher.published[1]["commandId"]


async def test_a_refusal_is_recorded_and_not_dead_lettered() -> None:
    refusal = ApiError("gone", status=404, code="WorkspaceNotFound")
    api, publisher = FakeApi(refusal), FakePublisher()
    worker = pipeline(api, publisher)
    await worker.handle(SPEC, delivery())
    await worker.handle(SPEC, delivery())
    assert len(api.requests) == 1
    assert publisher.dead == []
    assert publisher.published[1]["error"]["code"] == "WorkspaceNotFound"


async def test_retriable_failure_is_delayed_without_an_event_then_final() -> None:
    down = RetriesExhausted("down", status=503)
    api, publisher = FakeApi(down, down), FakePublisher()
    worker = pipeline(api, publisher, retry_delays=[10.0])
    await worker.handle(SPEC, delivery())
    assert (publisher.delayed, publisher.published) == ([(1, 10.0)], [])
    await worker.handle(SPEC, delivery(headers={DELAYED_ATTEMPT_HEADER: 1}))
    assert publisher.published[0]["error"]["code"] == "RetriesExhausted"
    assert publisher.dead == ["RetriesExhausted"]


async def test_a_final_retriable_outcome_is_recorded_like_any_other() -> None:
    """Its delays spent, a retriable failure is final: a re-send gets the same event."""
    api, publisher = FakeApi(RetriesExhausted("down", status=503), created()), FakePublisher()
    worker = pipeline(api, publisher)
    await worker.handle(SPEC, delivery())
    await worker.handle(SPEC, delivery())
    assert [event["type"] for event in publisher.published] == ["workspace.create.failed"] * 2
    assert publisher.published[0] == publisher.published[1]
    assert len(api.requests) == 1


async def test_a_crash_is_redelivered_until_the_last_delivery_then_becomes_an_event() -> None:
    api, publisher = FakeApi(RuntimeError("bug"), RuntimeError("bug")), FakePublisher()
    worker = pipeline(api, publisher, delivery_limit=3)
    with pytest.raises(RuntimeError):
        await worker.handle(SPEC, delivery(headers={DELIVERY_COUNT_HEADER: 2}))
    assert publisher.published == []
    await worker.handle(SPEC, delivery(headers={DELIVERY_COUNT_HEADER: 3}))
    error = publisher.published[0]["error"]
    assert (error["code"], error["retriable"]) == ("RetriesExhausted", False)
    assert "RuntimeError" in error["message"]
    assert publisher.dead == ["RetriesExhausted"]


async def test_a_crash_in_validation_is_bounded_like_any_other() -> None:
    class Crashing(CreateWorkspace):
        @field_validator("name")
        @classmethod
        def _bug(cls, value: str) -> str:
            raise RuntimeError("validator bug")  # not a ValueError: pydantic lets it out

    spec = replace(SPEC, model=Crashing)
    api, publisher = FakeApi(), FakePublisher()
    worker = pipeline(api, publisher, delivery_limit=3)
    with pytest.raises(RuntimeError):
        await worker.handle(spec, delivery(headers={DELIVERY_COUNT_HEADER: 2}))
    await worker.handle(spec, delivery(headers={DELIVERY_COUNT_HEADER: 3}))
    assert api.requests == []
    assert publisher.published[0]["error"]["code"] == "RetriesExhausted"


async def test_invalid_command_costs_no_call() -> None:
    api, publisher = FakeApi(), FakePublisher()
    await pipeline(api, publisher).handle(
        SPEC, Delivery(body=b"{", routing_key="workspace.create", message_id="c2")
    )
    assert api.requests == []
    assert publisher.dead == ["InvalidCommand"]


async def test_unknown_routing_keys_name_their_event_safely() -> None:
    publisher = FakePublisher()
    worker = pipeline(FakeApi(), publisher)
    await worker.handle(None, Delivery(body=b"{}", routing_key="thing.do", message_id="u1"))
    await worker.handle(None, Delivery(body=b"{}", routing_key="a b/../#", message_id="u2"))
    assert [event["type"] for event in publisher.published] == ["thing.do.failed", "command.failed"]
    assert {event["error"]["code"] for event in publisher.published} == {"UnknownCommand"}


def test_a_crashed_delivery_waits_longer_each_time_up_to_the_ceiling() -> None:
    policy = DeliveryPolicy(crash_backoff=0.5, crash_backoff_max=10.0)
    assert [policy.crash_wait(count) for count in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert policy.crash_wait(10_000) == 10.0


class FlakyRedisOutcomes(MemoryOutcomes):
    """Records in memory, but Redis "does not answer" to the first `claims_failing` claims
    and to every record."""

    def __init__(self, claims_failing: int = 0, records_fail: bool = False) -> None:
        super().__init__(ttl=60, lease=5)
        self.claims_failing = claims_failing
        self.records_fail = records_fail

    async def claim(
        self, command_id: str, *, fresh: bool = False, unsent_token: str | None = None
    ) -> Claim:
        if self.claims_failing:
            self.claims_failing -= 1
            raise RedisConnectionError("Connection refused")
        return await super().claim(command_id, fresh=fresh, unsent_token=unsent_token)

    async def record(
        self, command_id: str, token: str, event: bytes, *, replace: bool = False
    ) -> bytes:
        if self.records_fail:
            raise RedisConnectionError("Connection refused")
        return await super().record(command_id, token, event, replace=replace)


def waiting_pipeline(
    api: FakeApi, publisher: FakePublisher, outcomes: MemoryOutcomes, pings: list[bool]
) -> Pipeline:
    metrics = Metrics(frozenset({"workspace.create"}))

    async def ping() -> bool:
        return pings.pop(0)

    return Pipeline(
        api,
        publisher,
        outcomes,
        metrics=metrics,
        follower=JobFollower(api, publisher, outcomes, schedule=(15.0,)),
        policy=DeliveryPolicy(retry_delays=()),
        outages=Outages(metrics, ping, {}, poll_seconds=0.001),
    )


async def test_a_claim_redis_does_not_answer_waits_for_it_and_spends_no_delivery() -> None:
    api, publisher = FakeApi(created()), FakePublisher()
    outcomes = FlakyRedisOutcomes(claims_failing=2)
    pings = [False, False, True, True]
    worker = waiting_pipeline(api, publisher, outcomes, pings)
    await worker.handle(SPEC, delivery())  # returns: acked, not nacked
    assert [event["type"] for event in publisher.published] == ["workspace.created"]
    assert publisher.dead == []
    assert len(api.requests) == 1


async def test_an_outcome_whose_record_fails_is_published_all_the_same() -> None:
    api, publisher = FakeApi(created()), FakePublisher()
    worker = waiting_pipeline(api, publisher, FlakyRedisOutcomes(records_fail=True), [])
    await worker.handle(SPEC, delivery())
    assert [event["type"] for event in publisher.published] == ["workspace.created"]


async def test_an_open_breaker_makes_the_command_wait_and_try_again() -> None:
    api, publisher = FakeApi(DependencyDown("api"), created()), FakePublisher()
    metrics = Metrics(frozenset({"workspace.create"}))
    waited: list[str] = []

    async def breaker_wait() -> None:
        waited.append("api")

    outcomes = MemoryOutcomes(ttl=60, lease=5)
    worker = Pipeline(
        api,
        publisher,
        outcomes,
        metrics=metrics,
        follower=JobFollower(api, publisher, outcomes, schedule=(15.0,)),
        policy=DeliveryPolicy(retry_delays=(10.0,)),
        outages=Outages(metrics, None, {"api": breaker_wait}),
    )
    await worker.handle(SPEC, delivery())
    assert waited == ["api"]
    assert publisher.delayed == [], "not parked in a delay queue"
    assert [event["type"] for event in publisher.published] == ["workspace.created"]


async def test_a_command_over_max_command_bytes_is_refused_unread() -> None:
    api, publisher = FakeApi(), FakePublisher()
    worker = pipeline(api, publisher, max_command_bytes=1024)
    # Not even JSON: a parser would have said InvalidJson; the size is checked first.
    body = b"\xff" * 1025
    await worker.handle(SPEC, Delivery(body=body, routing_key="workspace.create", message_id="b1"))
    assert api.requests == []
    [event] = publisher.published
    error = event["error"]
    assert (error["code"], error["status"]) == ("InvalidCommand", None)
    assert "MAX_COMMAND_BYTES (1024 bytes)" in error["message"]
    assert error["details"] == [
        {"code": "InvalidValue", "message": "larger than MAX_COMMAND_BYTES (1024 bytes)",
         "target": "body"},
    ]  # fmt: skip
    assert publisher.dead == ["InvalidCommand"]


async def test_a_command_at_max_command_bytes_is_read() -> None:
    api, publisher = FakeApi(created()), FakePublisher()
    body = b'{"name": "w"}'
    worker = pipeline(api, publisher, max_command_bytes=1024)
    padded = body + b" " * (1024 - len(body))
    await worker.handle(
        SPEC, Delivery(body=padded, routing_key="workspace.create", message_id="b2")
    )
    assert [event["type"] for event in publisher.published] == ["workspace.created"]


async def test_a_result_too_large_for_an_event_is_a_failure_naming_the_id() -> None:
    big = {**WORKSPACE, "description": "d" * 100_000}
    api, publisher = FakeApi(ApiResponse(201, {"workspace": big}, 1)), FakePublisher()
    worker = pipeline(api, publisher, max_event_bytes=65536)
    await worker.handle(SPEC, delivery())
    await worker.handle(SPEC, delivery())
    assert len(api.requests) == 1
    first, again = publisher.published
    assert first == again, "the failure is the recorded outcome"
    assert first["type"] == "workspace.create.failed"
    error = first["error"]
    assert (error["code"], error["status"], error["target"]) == ("ResultTooLarge", 201, "w1")
    assert "MAX_EVENT_BYTES (65536 bytes)" in error["message"]
    assert first["attempts"] == 1
    assert publisher.dead == ["ResultTooLarge"]
