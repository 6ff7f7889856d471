"""A broken or hostile peer cannot wedge the worker or blow up its memory (issue 24).

A worker process (`itwin-worker run`) against a stand-in API that answers what no honest API
gives (`tests.hostile`, over a real socket), producers that send what no schema allows, and
the broker refusing one message. Each test has its own exchanges and queues in the session's
vhost, so nothing it sends reaches another test's worker. Peak memory is the worker's VmHWM,
read from /proc.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from service.producer import Producer
from service.settings import Settings
from tests.hostile import MEGABYTE_COMMAND, HostileApi, outsized_commands
from tests.rabbit_cluster import RabbitCluster
from tests.support import (
    WorkerProcess,
    drain_queue,
    rabbitmqctl,
    status_mib,
    worker_settings,
)

WAIT = 60.0
"""Bound on every wait for events: a wedged worker fails the test instead of hanging it (this
is no speed figure: `./dev bench memory` prints those)."""
PEAK_RSS_MIB = 250


class Isolated:
    """A worker process of a test's own: exchanges and queues no other test uses."""

    def __init__(self, amqp_url: str, api: HostileApi, tmp_path: Path, **overrides: Any) -> None:
        tag = uuid.uuid4().hex[:8]
        self.amqp_url = amqp_url
        self.settings: Settings = worker_settings(
            amqp_url,
            api,
            log_format="json",
            command_exchange=f"hostile-{tag}.commands",
            event_exchange=f"hostile-{tag}.events",
            queue_prefix=f"hostile-{tag}.",
            dead_letter_queue=f"hostile-{tag}.dlq",
            **overrides,
        )
        self.worker = WorkerProcess(self.settings, tmp_path / f"worker-{tag}.log")

    def producer(self) -> Producer:
        return Producer(self.amqp_url, self.settings.command_exchange)

    @property
    def peak_rss_mib(self) -> float:
        return status_mib(self.worker.process.pid, "VmHWM")

    async def dead_letters(self) -> dict[str, str]:
        """Message id → error code of every command in the dead-letter queue."""
        messages = await drain_queue(self.amqp_url, self.settings.dead_letter_queue, quiet=0.5)
        return {
            str(m.message_id): str((m.headers or {}).get("x-itwin-error-code")) for m in messages
        }


@pytest.fixture
async def hostile() -> AsyncIterator[HostileApi]:
    async with HostileApi() as api:
        yield api


@pytest.fixture
async def spawn(amqp_url: str, hostile: HostileApi, tmp_path: Path) -> AsyncIterator[Any]:
    """Start a worker process against the stand-in; every one is stopped after the test."""
    started: list[Isolated] = []

    async def start(**overrides: Any) -> Isolated:
        isolated = Isolated(amqp_url, hostile, tmp_path, **overrides)
        started.append(isolated)
        await isolated.worker.ready()
        return isolated

    yield start
    for isolated in started:
        isolated.worker.stop()


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


async def events_for(producer: Producer, ids: list[str]) -> dict[str, dict[str, Any]]:
    async with asyncio.timeout(WAIT):
        return {command_id: await producer.event_for(command_id) for command_id in ids}


async def test_a_300_mb_answer_is_one_failure_and_the_commands_behind_it_flow(
    spawn: Any, hostile: HostileApi
) -> None:
    isolated = await spawn()
    async with isolated.producer() as producer:
        huge = await producer.publish("workspace.create", body({"name": "huge"}))
        behind = [
            await producer.publish("workspace.create", body({"name": f"w{i}"})) for i in range(20)
        ]
        events = await events_for(producer, [huge, *behind])
        # Sent again with the same id: the recorded outcome, not a second POST.
        await producer.publish("workspace.create", body({"name": "huge"}), message_id=huge)
        async with asyncio.timeout(WAIT):
            again = await producer.nth_event(huge, 1)
    error = events[huge]["error"]
    assert events[huge]["type"] == "workspace.create.failed"
    assert (error["code"], error["status"], error["retriable"]) == ("OutcomeUnknown", 201, False)
    assert "MAX_RESPONSE_BYTES (8388608 bytes)" in error["message"]
    assert again == events[huge]
    assert [events[i]["type"] for i in behind] == ["workspace.created"] * 20
    assert hostile.posts("huge") == 1
    # The worker hung up at the declared length: what reached it is socket buffers, not 300 MB.
    assert hostile.sent["huge"] < 64 * 1024 * 1024
    assert (await isolated.dead_letters())[huge] == "OutcomeUnknown"
    assert isolated.peak_rss_mib <= PEAK_RSS_MIB
    assert isolated.worker.process.poll() is None
    log = isolated.worker.log()
    assert "connection close" not in log.lower()
    # No delivery came back to its queue: the one duplicate is the re-send above.
    assert log.count("duplicate command") == 1


async def test_each_hostile_answer_is_one_event_and_no_post_is_sent_twice(
    spawn: Any, hostile: HostileApi
) -> None:
    isolated = await spawn(api_read_timeout_seconds=2.0)
    cases = {
        ("workspace.create", "endless"): ("OutcomeUnknown", 201),
        ("workspace.get", "endless"): ("ResponseTooLarge", 200),
        ("workspace.create", "big-result"): ("ResultTooLarge", 201),
        ("workspace.create", "cut"): ("UnexpectedResponse", 201),
        ("workspace.create", "html"): ("UnexpectedResponse", 201),
        ("workspace.create", "redirect"): ("Http307", 307),
        ("workspace.create", "refusal"): ("InvalidWorkspace", 422),
        ("workspace.create", "trickle"): ("OutcomeUnknown", None),
        ("workspace.get", "gateway-1"): (None, 200),
    }
    async with isolated.producer() as producer:
        ids = {}
        for (routing_key, name), _ in cases.items():
            field = "name" if routing_key == "workspace.create" else "workspaceId"
            ids[routing_key, name] = await producer.publish(routing_key, body({field: name}))
        events = await events_for(producer, list(ids.values()))
        await asyncio.sleep(1.0)  # time for a second event or request, if any came
        assert len(producer.events) == len(cases), "one event per command"
    for (routing_key, name), (code, status) in cases.items():
        event = events[ids[routing_key, name]]
        method = "POST" if routing_key == "workspace.create" else "GET"
        if code is None:
            assert event["type"] == "workspace.retrieved", event
            assert event["attempts"] == 2  # the gateway's 502 page, then the answer
            assert hostile.requests[method, name] == 2
            continue
        assert event["type"] == f"{routing_key}.failed", event
        assert (event["error"]["code"], event["error"]["status"]) == (code, status), name
        assert hostile.requests[method, name] == 1, name
    big = events[ids["workspace.create", "big-result"]]["error"]
    assert big["target"] == "w-big"
    assert "MAX_EVENT_BYTES (1048576 bytes)" in big["message"]
    refusal = events[ids["workspace.create", "refusal"]]["error"]
    assert len(refusal["message"]) <= 1000
    assert len(refusal["details"]) == 16
    assert "9984 more details not listed" in refusal["message"]
    assert hostile.elsewhere == [], "the redirect was not followed: no token went elsewhere"
    # Less than the bound and socket buffers: nobody read the endless bodies to their end.
    assert hostile.sent["endless"] < 2 * 64 * 1024 * 1024
    dead = await isolated.dead_letters()
    assert dead[ids["workspace.create", "endless"]] == "OutcomeUnknown"
    assert dead[ids["workspace.create", "big-result"]] == "ResultTooLarge"
    assert dead[ids["workspace.get", "endless"]] == "ResponseTooLarge"


async def test_an_answer_that_never_comes_ends_in_outcome_unknown_and_others_flow(
    spawn: Any, hostile: HostileApi
) -> None:
    isolated = await spawn(api_read_timeout_seconds=3.0)
    async with isolated.producer() as producer:
        hang = await producer.publish("workspace.create", body({"name": "hang"}))
        others = [
            await producer.publish("workspace.create", body({"name": f"o{i}"})) for i in range(10)
        ]
        events = await events_for(producer, [hang, *others])
        await producer.publish("workspace.create", body({"name": "hang"}), message_id=hang)
        async with asyncio.timeout(WAIT):
            again = await producer.nth_event(hang, 1)
    error = events[hang]["error"]
    assert (error["code"], error["retriable"]) == ("OutcomeUnknown", False)
    assert "ReadTimeout" in error["message"]
    assert again == events[hang]
    arrived = [event["commandId"] for event in producer.events]
    assert set(arrived[:10]) == set(others), "the others were answered while the POST hung"
    assert hostile.posts("hang") == 1, "never sent again"
    assert (await isolated.dead_letters())[hang] == "OutcomeUnknown"


async def test_a_flood_of_outsized_commands_is_refused_without_a_call(
    spawn: Any, hostile: HostileApi
) -> None:
    isolated = await spawn()
    says = {
        "a 10 MB name": "larger than MAX_COMMAND_BYTES",
        "100 000 nested arrays": "recursion limit",
        "200 000 keys": "larger than MAX_COMMAND_BYTES",
        "50 000 unknown keys": "49984 more details not listed",
        "bad UTF-8": "invalid unicode",
    }
    async with isolated.producer() as producer:
        ids = {
            kind: await producer.publish("workspace.create", sent)
            for kind, sent in outsized_commands().items()
        }
        megabytes = [
            await producer.publish("workspace.create", MEGABYTE_COMMAND) for _ in range(300)
        ]
        events = await events_for(producer, [*ids.values(), *megabytes])
        normal = await producer.publish("workspace.create", body({"name": "normal"}))
        answered = await events_for(producer, [normal])
    for kind, command_id in ids.items():
        error = events[command_id]["error"]
        assert error["code"] == "InvalidCommand", kind
        text = json.dumps(error)
        assert says[kind] in text, (kind, text[:500])
        assert len(text) < 20_000, "no echo of the input"
    assert {events[i]["error"]["code"] for i in megabytes} == {"InvalidCommand"}
    assert answered[normal]["type"] == "workspace.created"
    assert sum(hostile.requests.values()) == 1, "only the normal command reached the API"
    assert isolated.peak_rss_mib <= PEAK_RSS_MIB


def crafted_reply_to() -> str:
    """A direct reply-to name RabbitMQ 3.10 cannot decode: publishing to it closes the
    publisher's whole connection (541 INTERNAL_ERROR)."""
    suffix = base64.b64encode(b"not an Erlang term").decode().rstrip("=")
    return f"amq.rabbitmq.reply-to.{suffix}.x"


def consumer_channels(vhost: str, broker: RabbitCluster | None = None) -> set[str]:
    """The channels the vhost's consumers are on (the machine's broker, or `broker`)."""
    arguments = ("list_consumers", "-p", vhost, "channel_pid")
    listed = broker.ctl(*arguments) if broker is not None else rabbitmqctl(*arguments)
    return {line.split("\t")[0] for line in listed.splitlines() if line.strip()}


async def test_a_reply_to_that_closes_a_connection_is_one_commands_problem(
    amqp_url: str, spawn: Any, hostile: HostileApi
) -> None:
    isolated = await spawn()
    vhost = amqp_url.rsplit("/", 1)[1]
    before = consumer_channels(vhost)
    assert before
    connection = await aio_pika.connect(amqp_url)
    async with connection, isolated.producer() as producer:
        channel = await connection.channel()
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(isolated.settings.event_exchange, routing_key="#")
        exchange = await channel.get_exchange(isolated.settings.command_exchange)
        crafted = [f"crafted-{i}" for i in range(3)]
        ordinary = []
        for i in range(20):
            if i % 7 == 0:
                await exchange.publish(
                    aio_pika.Message(
                        body({"name": f"c{i}"}),
                        message_id=crafted[i // 7],
                        reply_to=crafted_reply_to(),
                    ),
                    routing_key="workspace.create",
                )
            ordinary.append(await producer.publish("workspace.create", body({"name": f"o{i}"})))
        replies = await events_for(producer, ordinary)
        published = await drain_queue_until(tap, {*crafted, *ordinary})
    assert [replies[i]["type"] for i in ordinary] == ["workspace.created"] * 20
    assert {published[i] for i in crafted} == {"workspace.created"}, "the event was published"
    log = isolated.worker.log()
    assert "the broker refused the reply copy" in log
    assert "duplicate command" not in log, "no delivery went back to its queue"
    assert consumer_channels(vhost) == before, "the consumers' channels never closed"
    assert sum(hostile.requests.values()) == 23, "one POST per command"


async def drain_queue_until(
    queue: aio_pika.abc.AbstractQueue, command_ids: set[str]
) -> dict[str, str]:
    """Command id → event type of the events on `queue`, until every command has one."""
    seen: dict[str, str] = {}
    async with asyncio.timeout(WAIT), queue.iterator() as messages:
        async for message in messages:
            event = json.loads(message.body)
            seen[event["commandId"]] = event["type"]
            await message.ack()
            if command_ids <= seen.keys():
                return seen
    return seen


@pytest.fixture
async def small_broker() -> AsyncIterator[RabbitCluster]:
    """A RabbitMQ node of this test's own that refuses messages over 128 KiB (the machine's
    broker takes 128 MiB, and others use it)."""
    broker = RabbitCluster(1, max_message_size=128 * 1024)
    try:
        await asyncio.to_thread(broker.start)
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


async def test_an_event_the_broker_refuses_becomes_a_failure_event_and_others_flow(
    small_broker: RabbitCluster, hostile: HostileApi, tmp_path: Path
) -> None:
    hostile.result_bytes = 300 * 1024  # under MAX_EVENT_BYTES, over the broker's limit
    isolated = Isolated(small_broker.url(), hostile, tmp_path)
    await isolated.worker.ready()
    try:
        before = consumer_channels("/", small_broker)
        assert before
        async with isolated.producer() as producer:
            big = await producer.publish("workspace.create", body({"name": "big-result"}))
            behind = [
                await producer.publish("workspace.create", body({"name": f"w{i}"}))
                for i in range(20)
            ]
            events = await events_for(producer, [big, *behind])
            await asyncio.sleep(1.0)
            assert len(producer.events) == 21, "one event each"
        assert consumer_channels("/", small_broker) == before
    finally:
        isolated.worker.stop()
    error = events[big]["error"]
    assert events[big]["type"] == "workspace.create.failed"
    assert error["code"] == "EventRefused"
    assert "PRECONDITION_FAILED" in error["message"]
    assert [events[i]["type"] for i in behind] == ["workspace.created"] * 20
    assert hostile.posts("big-result") == 1
    assert "duplicate command" not in isolated.worker.log()
