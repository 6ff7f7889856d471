"""Issue 4 acceptance: one API budget for every replica, 429 storms, retries, token refresh.

Worker processes share a Redis limiter (a plain Redis, and a Redis Cluster); the simulator's
request log (arrival times) is the judge of what reached the API.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import SpawnWorkers, StartWorker, drain_queue, max_in_window

pytestmark = pytest.mark.slow


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


async def publish_and_collect(
    producer: Producer, count: int, routing_key: str, document: Any, within: float
) -> list[dict[str, Any]]:
    ids = [await producer.publish(routing_key, body(document)) for _ in range(count)]
    async with asyncio.timeout(within):
        return [await producer.event_for(command_id) for command_id in ids]


async def test_three_replicas_share_one_budget(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_settings: dict[str, Any]
) -> None:
    rate, burst, commands = 20.0, 5, 600
    await spawn_workers(3, rate_limit_per_second=rate, rate_limit_burst=burst, **redis_settings)
    async with Producer(amqp_url, "itwin.commands") as producer:
        events = await publish_and_collect(
            producer, commands, "workspace.create", {"name": "w"}, within=90
        )
    assert {event["type"] for event in events} == {"workspace.created"}
    arrivals = [r.t for r in sim.requests(kind="api")]
    assert len(arrivals) == commands
    assert max_in_window(arrivals, 1.0) <= rate * 1.0 + burst
    assert max_in_window(arrivals, 5.0) <= rate * 5.0 + burst
    duration = max(arrivals) - min(arrivals)
    assert abs(duration - commands / rate) <= 0.1 * commands / rate, duration


async def test_a_429_storm_holds_every_replica_until_retry_after(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers, redis_settings: dict[str, Any]
) -> None:
    retry_after = 3
    await spawn_workers(3, rate_limit_per_second=40.0, rate_limit_burst=5, **redis_settings)
    async with Producer(amqp_url, "itwin.commands") as producer:
        ids = [await producer.publish("workspace.create", body({"name": "w"})) for _ in range(300)]
        await asyncio.sleep(1.0)
        sim.storm(seconds=retry_after, retry_after=retry_after)
        async with asyncio.timeout(60):
            events = [await producer.event_for(command_id) for command_id in ids]
        await asyncio.sleep(0.5)
        assert len(producer.events) == len(ids), "one event per command, no duplicates"
    assert {event["type"] for event in events} == {"workspace.created"}
    requests = sim.requests(kind="api")
    throttled = [r.t for r in requests if r.status == 429]
    assert throttled, "the storm answered 429"
    first = min(throttled)
    # Calls already on the wire when the first 429 was answered may still land just after it.
    in_flight_allowance = 0.25
    held = [r.t for r in requests if first + in_flight_allowance < r.t < first + retry_after]
    assert held == []
    assert len([r for r in requests if r.status == 201]) == len(ids)
    assert max(e["attempts"] for e in events) >= 2


async def test_429s_beyond_the_wait_budget_end_in_retries_exhausted(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(rate_limit_wait_budget_seconds=1.5)
    sim.storm(seconds=30, retry_after=1)
    async with Producer(amqp_url, "itwin.commands") as producer:
        command_id = await producer.publish("workspace.get", body({"workspaceId": "w1"}))
        async with asyncio.timeout(20):
            event = await producer.event_for(command_id)
    error = event["error"]
    assert (error["code"], error["status"], error["retriable"]) == ("RetriesExhausted", 429, True)
    assert event["attempts"] == 2
    dead = await drain_queue(amqp_url, "itwin-worker.dlq")
    assert command_id in {m.message_id for m in dead}


async def test_transient_failures_are_retried_and_counted(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(retry_attempts=8)
    sim.configure(error_rate=0.3, error_statuses=[503])
    async with Producer(amqp_url, "itwin.commands") as producer:
        events = await publish_and_collect(
            producer, 40, "workspace.create", {"name": "w"}, within=60
        )
    assert {event["type"] for event in events} == {"workspace.created"}
    requests = sim.requests(kind="api")
    assert sum(e["attempts"] for e in events) == len(requests)
    assert any(e["attempts"] > 1 for e in events)
    assert len([r for r in requests if r.status == 201]) == 40


async def test_api_down_longer_than_the_retries_gives_retries_exhausted(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(retry_attempts=3)
    sim.configure(error_rate=1.0, error_statuses=[503])
    async with Producer(amqp_url, "itwin.commands") as producer:
        [event] = await publish_and_collect(producer, 1, "workspace.create", {"name": "w"}, 30)
    error = event["error"]
    assert (error["code"], error["status"], error["retriable"]) == ("RetriesExhausted", 503, True)
    assert event["attempts"] == 3
    assert len(sim.requests(kind="api")) == 3


async def test_a_post_whose_answer_is_lost_is_not_repeated(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(api_read_timeout_seconds=0.5)
    sim.configure(hang_rate=1.0, hang_seconds=2.0)
    async with Producer(amqp_url, "itwin.commands") as producer:
        [event] = await publish_and_collect(producer, 1, "application.create",
                                            {"displayName": "A", "version": "1"}, 30)  # fmt: skip
    error = event["error"]
    assert (error["code"], error["status"], error["retriable"]) == ("OutcomeUnknown", None, False)
    assert event["attempts"] == 1
    assert len(sim.requests(kind="api")) == 1, "the POST was sent once, never repeated"
    dead = await drain_queue(amqp_url, "itwin-worker.dlq")
    assert event["commandId"] in {m.message_id for m in dead}


async def test_a_get_whose_answer_is_lost_is_retried(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(api_read_timeout_seconds=0.3, retry_attempts=3)
    sim.configure(hang_rate=1.0, hang_seconds=2.0)
    async with Producer(amqp_url, "itwin.commands") as producer:
        [event] = await publish_and_collect(producer, 1, "workspace.get", {"workspaceId": "w"}, 30)
    assert (event["error"]["code"], event["attempts"]) == ("RetriesExhausted", 3)


async def test_token_expiry_mid_load_costs_one_refresh(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker(prefetch=64)
    async with Producer(amqp_url, "itwin.commands") as producer:
        # The expiry falls between two batches, so it is certain to come mid-load: a worker
        # faster than the producer would otherwise have finished everything before it.
        ids = [await producer.publish("workspace.create", body({"name": "w"})) for _ in range(100)]
        async with asyncio.timeout(60):
            await producer.event_for(ids[-1])
            sim.expire_tokens()
            for _ in range(300):
                ids.append(await producer.publish("workspace.create", body({"name": "w"})))
            events = [await producer.event_for(command_id) for command_id in ids]
    assert {event["type"] for event in events} == {"workspace.created"}
    assert len(sim.requests(kind="token")) == 2, "one fetch at start, one refresh after expiry"
    assert any(r.status == 401 for r in sim.requests(kind="api"))


async def test_secrets_and_tokens_never_reach_logs_or_events(
    amqp_url: str, sim: SimulatorHandle, spawn_workers: SpawnWorkers
) -> None:
    [worker] = await spawn_workers(1, log_level="DEBUG")
    sim.expire_tokens()
    async with Producer(amqp_url, "itwin.commands") as producer:
        events = await publish_and_collect(producer, 5, "workspace.create", {"name": "w"}, 20)
        # A token endpoint that is down: the command waits for it (logged), then succeeds.
        sim.configure(token_endpoint_down=True)
        sim.expire_tokens()
        command_id = await producer.publish("workspace.create", body({"name": "w"}))
        async with asyncio.timeout(20):
            while sim.requests(kind="token")[-1].status != 503:
                await asyncio.sleep(0.05)
        sim.configure(token_endpoint_down=False)
        async with asyncio.timeout(20):
            events.append(await producer.event_for(command_id))
    worker.stop()
    log = worker.log()
    assert "command finished" in log
    for text in [log, json.dumps(events)]:
        assert sim.client_secret not in text
        assert "Bearer " not in text
        assert "access_token" not in text


async def test_long_limiter_waits_never_send_an_expired_token(
    amqp_url: str, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    """The token is taken after the limiter wait: a backlog that waits longer than a token
    lives still sends only live tokens, and fetches about one token per lifetime."""
    lifetime, rate, commands = 3, 20.0, 200
    sim.configure(token_lifetime_seconds=lifetime)
    await start_worker(rate_limit_per_second=rate, rate_limit_burst=5, prefetch=commands)
    async with Producer(amqp_url, "itwin.commands") as producer:
        events = await publish_and_collect(
            producer, commands, "workspace.create", {"name": "w"}, within=60
        )
    assert {event["type"] for event in events} == {"workspace.created"}
    api = sim.requests(kind="api")
    assert [r.status for r in api].count(401) == 0, "no expired token reached the API"
    assert len(api) == commands
    drained = max(r.t for r in api) - min(r.t for r in api)
    lifetimes = drained / lifetime
    fetches = len(sim.requests(kind="token"))
    assert lifetimes >= 3, f"the backlog outlives several tokens ({drained:.1f} s)"
    assert fetches <= lifetimes + 2, f"{fetches} fetches over {lifetimes:.1f} lifetimes"
