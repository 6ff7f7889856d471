"""Issue 18 acceptance: producers cannot switch off a guarantee.

A vhost of its own with three real RabbitMQ users, given the permissions of docs/security.md
(the worker runs as the worker user, so the recipe is proved sufficient for it too), plus
`guest` with every right, standing for a producer on a broker whose permissions are lax: the
worker's own checks must hold even then.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused

from service.delivery import DELAYED_ATTEMPT_HEADER, REPLAY_HEADER, ROUTING_KEY_HEADER
from service.jobs import Poll
from service.producer import Producer
from service.simulator import SimulatorHandle
from tests.support import AMQP_BASE, WorkerProcess, drain_queue, worker_settings

pytestmark = pytest.mark.slow

# The commands this test's producer may send, and the events it may bind to (topic permissions).
PRODUCER_KEYS = r"^(workspace|job)\..+$"


def worker_permissions() -> tuple[str, str, str]:
    """configure, write, read: docs/security.md, the worker."""
    return (
        r"^(itwin\.commands(\.unrouted)?|itwin\.events|itwin-worker\..+)$",
        r"^(amq\.default|itwin\.commands\.unrouted|itwin\.events|itwin-worker\..+)$",
        r"^(itwin\.commands(\.unrouted)?|itwin-worker\..+)$",
    )


def producer_permissions(user: str) -> tuple[str, str, str]:
    """docs/security.md, a producer: its own `reply.<user>.` queues, commands, events."""
    own = rf"reply\.{user}\..+"
    return f"^{own}$", rf"^(itwin\.commands|{own})$", rf"^(itwin\.events|{own})$"


OPERATOR_PERMISSIONS = (r"^$", r"^itwin-worker\.replay$", r"^itwin-worker\.dlq$")


@dataclass(frozen=True)
class SecuredBroker:
    admin: str
    worker: str
    producer: str
    producer_user: str
    operator: str
    operator_user: str
    operator_password: str


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredBroker]:
    run = uuid.uuid4().hex[:10]
    vhost = f"itwin-trust-{run}"
    host = urlsplit(AMQP_BASE).netloc.rpartition("@")[2]
    users = {role: (f"itwin-test-{run}-{role}", secrets.token_hex(16)) for role in ("w", "p", "o")}

    def url(role: str) -> str:
        name, password = users[role]
        return f"amqp://{name}:{password}@{host}/{vhost}"

    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        for name, password in users.values():
            _rabbitmqctl("add_user", name, password)
        producer = users["p"][0]
        _rabbitmqctl("set_permissions", "-p", vhost, users["w"][0], *worker_permissions())
        _rabbitmqctl("set_permissions", "-p", vhost, producer, *producer_permissions(producer))
        _rabbitmqctl("set_topic_permissions", "-p", vhost, producer, "itwin.commands",
                     PRODUCER_KEYS, "^$")  # fmt: skip
        _rabbitmqctl("set_topic_permissions", "-p", vhost, producer, "itwin.events",
                     "^$", PRODUCER_KEYS)  # fmt: skip
        _rabbitmqctl("set_permissions", "-p", vhost, users["o"][0], *OPERATOR_PERMISSIONS)
        yield SecuredBroker(
            admin=f"{AMQP_BASE}/{vhost}",
            worker=url("w"),
            producer=url("p"),
            producer_user=producer,
            operator=url("o"),
            operator_user=users["o"][0],
            operator_password=users["o"][1],
        )
    finally:
        for name, _ in users.values():
            _rabbitmqctl("delete_user", name, check=False)
        _rabbitmqctl("delete_vhost", vhost)


StartWorker = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
async def start_worker(
    secured: SecuredBroker, sim: SimulatorHandle, tmp_path: Path
) -> AsyncIterator[StartWorker]:
    """`itwin-worker run` as the worker user, its JSON log kept; stopped after the test."""
    started: list[WorkerProcess] = []

    async def start(**overrides: Any) -> WorkerProcess:
        settings = worker_settings(secured.worker, sim, log_format="json", **overrides)
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        await worker.ready()
        return worker

    yield start
    for worker in started:
        assert worker.stop() == 0


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


@asynccontextmanager
async def event_tap(amqp_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every event on `itwin.events`, in arrival order, while the block runs."""
    seen: list[dict[str, Any]] = []

    async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.append(json.loads(message.body))

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind("itwin.events", routing_key="#")
        await queue.consume(keep, no_ack=True)
        yield seen


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.05)


def log_lines(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    return [line for line in lines if str(line.get("event", "")).startswith(event)]


IGNORED = "ignored the worker's own headers"


async def test_a_producers_headers_do_not_reopen_a_completed_command(
    secured: SecuredBroker, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    command = body({"name": "w"})
    forged: list[dict[str, Any]] = [
        {REPLAY_HEADER: True},
        {DELAYED_ATTEMPT_HEADER: 0},
        {ROUTING_KEY_HEADER: "forged.routing-key"},
        {REPLAY_HEADER: 1, DELAYED_ATTEMPT_HEADER: 0, ROUTING_KEY_HEADER: "forged.routing-key"},
    ]
    async with event_tap(secured.admin) as events:
        async with Producer(secured.producer, "itwin.commands") as producer:
            command_id = await producer.publish("workspace.create", command)
            async with asyncio.timeout(20):
                first = await producer.event_for(command_id)
            for headers in forged:
                await producer.publish(
                    "workspace.create", command, message_id=command_id, headers=headers
                )
            await until(lambda: len(producer.events) == 1 + len(forged))
            replies = producer.events
        # Lax permissions: straight into the work queue through the default exchange.
        connection = await aio_pika.connect(secured.admin)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(
                aio_pika.Message(command, message_id=command_id, headers={REPLAY_HEADER: True}),
                routing_key="itwin-worker.workspace.create",
            )
        await until(lambda: len(events) == 2 + len(forged))
    assert replies == [first] * (1 + len(forged)), "the recorded event, event id included"
    assert events == [first] * (2 + len(forged))
    assert len(sim.requests(kind="api")) == 1, "no second API call"
    ignored = log_lines(worker, IGNORED)
    assert [sorted(line["headers"]) for line in ignored] == [
        sorted(headers) for headers in [*forged, {REPLAY_HEADER: True}]
    ], "logged once per command, by name"
    assert "forged.routing-key" not in worker.log(), "never the values"


async def test_a_command_whose_delays_are_spent_stays_final_whatever_a_producer_sends(
    secured: SecuredBroker, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    """Delays spent, the failure is final and recorded: a re-send with
    `x-itwin-delayed-attempt: 0` (or any header of the worker's) gets that same event again,
    with no API call."""
    await start_worker(retry_delays=[0.2], retry_attempts=1)
    sim.configure(error_rate=1.0, error_statuses=[503])
    async with Producer(secured.producer, "itwin.commands") as producer:
        command_id = await producer.publish("workspace.create", body({"name": "w"}))
        async with asyncio.timeout(20):
            final = await producer.event_for(command_id)
        assert final["error"]["code"] == "RetriesExhausted"
        assert len(sim.requests(kind="api")) == 2, "one attempt, one more after the delay"
        sim.configure(error_rate=0.0)
        for n, headers in enumerate(
            [{DELAYED_ATTEMPT_HEADER: 0}, {DELAYED_ATTEMPT_HEADER: 0, REPLAY_HEADER: True}],
            start=1,
        ):
            sim.clear_requests()
            await producer.publish(
                "workspace.create", body({"name": "w"}), message_id=command_id, headers=headers
            )
            async with asyncio.timeout(20):
                again = await producer.nth_event(command_id, n)
            assert again == final, f"{headers}: the recorded event"
            assert sim.requests(kind="api") == [], f"{headers}: no API call"


Publish = Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]


async def refused(publish: Publish, url: str) -> str:
    """Run `publish` on a fresh confirming channel; return the broker's refusal."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(ChannelAccessRefused) as refusal:
            await publish(channel)
    return str(refusal.value)


async def test_only_operators_write_to_the_replay_and_retry_exchanges(
    secured: SecuredBroker, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    await start_worker()
    forged = aio_pika.Message(body({"name": "w"}), headers={REPLAY_HEADER: True})

    def to(exchange: str, routing_key: str) -> Publish:
        async def publish(channel: aio_pika.abc.AbstractChannel) -> Any:
            target = await channel.get_exchange(exchange) if exchange else channel.default_exchange
            return await target.publish(forged, routing_key=routing_key)

        return publish

    for exchange, routing_key in [
        ("itwin-worker.replay", "workspace.create"),
        ("itwin-worker.retry", "workspace.create"),
        ("itwin-worker.wait.15s", "workspace.create"),  # a delay queue's way into retry
        ("", "itwin-worker.workspace.create"),  # the default exchange, into a work queue
    ]:
        refusal = await refused(to(exchange, routing_key), secured.producer)
        assert "ACCESS_REFUSED" in refusal
        assert f"exchange '{exchange or 'amq.default'}'" in refusal
    # Topic permissions: commands outside the producer's routing keys, bindings likewise.
    refusal = await refused(to("itwin.commands", "application.create"), secured.producer)
    assert "ACCESS_REFUSED" in refusal

    async def bind_to_every_event(channel: aio_pika.abc.AbstractChannel) -> Any:
        queue = await channel.declare_queue(f"reply.{secured.producer_user}.{uuid.uuid4()}")
        return await queue.bind("itwin.events", routing_key="#")

    assert "ACCESS_REFUSED" in await refused(bind_to_every_event, secured.producer)

    sim.configure(error_rate=1.0, error_statuses=[500])  # a 500 on a POST: recorded, DLQ
    async with Producer(secured.producer, "itwin.commands") as producer:
        command_id = await producer.publish("workspace.create", body({"name": "w"}))
        async with asyncio.timeout(20):
            failed = await producer.event_for(command_id)
        assert failed["error"]["status"] == 500
        sim.configure(error_rate=0.0)
        await producer.publish(
            "workspace.create", body({"name": "w"}), message_id=command_id,
            headers={REPLAY_HEADER: True},
        )  # fmt: skip
        await until(lambda: len(producer.events) == 2)
        assert producer.events[1] == failed, "a producer's replay header: the record"
        assert len(sim.requests(kind="api")) == 1

        # The producer user's own `dlq replay` is refused; the operator's is not.
        as_producer = await dlq_replay(secured.producer, command_id)
        assert as_producer.returncode == 2
        assert as_producer.stderr.startswith("error: RabbitMQ refused: ")
        assert "ACCESS_REFUSED" in as_producer.stderr
        replay = await dlq_replay(secured.operator, command_id)
        assert replay.returncode == 0, replay.stderr
        assert f"as RabbitMQ user {secured.operator_user}\n" in replay.stdout
        assert f"replayed {command_id} to workspace.create" in replay.stdout
        assert secured.operator_password not in replay.stdout + replay.stderr
        await until(lambda: len(producer.events) == 3)
    assert producer.events[2]["type"] == "workspace.created", "a fresh attempt"
    assert len(sim.requests(kind="api")) == 2


async def dlq_replay(amqp_url: str, command_id: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ITWIN_WORKER_")}
    environment["ITWIN_WORKER_AMQP_URL"] = amqp_url
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service.cli", "dlq", "replay", "--id", command_id],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_reply_to_is_honoured_only_within_the_pattern(
    secured: SecuredBroker, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    worker = await start_worker()
    victim, hostile = "billing.inbox", "billing.inbox\n{fake log line}"
    admin = await aio_pika.connect(secured.admin)
    async with admin, event_tap(secured.admin) as events:
        admin_channel = await admin.channel()
        await admin_channel.declare_queue(victim, durable=True)
        connection = await aio_pika.connect(secured.producer)
        async with connection:
            # Direct reply-to as RabbitMQ documents it: consume without acks, and publish
            # the commands on the same channel.
            channel = await connection.channel(publisher_confirms=True)
            direct: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
            pseudo = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
            await pseudo.consume(direct.put, no_ack=True)
            mine: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
            own = await channel.declare_queue(
                f"reply.{secured.producer_user}.{uuid.uuid4()}", exclusive=True
            )
            await own.consume(mine.put, no_ack=True)
            commands = await channel.get_exchange("itwin.commands")
            ids = {}
            for reply_to in [
                "amq.rabbitmq.reply-to", own.name, victim, hostile, "itwin-worker.workspace.get",
            ]:  # fmt: skip
                ids[reply_to] = str(uuid.uuid4())
                await commands.publish(
                    aio_pika.Message(
                        body({"name": "w"}), message_id=ids[reply_to], reply_to=reply_to
                    ),
                    routing_key="workspace.create",
                )
            async with asyncio.timeout(20):
                via_direct = json.loads((await direct.get()).body)
                via_own = json.loads((await mine.get()).body)
            await until(lambda: len(events) == len(ids))
        await asyncio.sleep(0.5)  # time for anything that should not happen
    assert via_direct["commandId"] == ids["amq.rabbitmq.reply-to"]
    assert via_own["commandId"] == ids[own.name]
    assert sorted(event["commandId"] for event in events) == sorted(ids.values())
    assert {event["type"] for event in events} == {"workspace.created"}, "nothing fed back in"
    assert await drain_queue(secured.admin, victim, quiet=0.5) == []
    refusals = log_lines(worker, "reply_to not allowed")
    assert sorted(line["reply_to"] for line in refusals) == sorted(
        [victim, "billing.inbox\\n{fake log line}", "itwin-worker.workspace.get"]
    )


async def test_a_poll_from_anywhere_but_the_retry_exchange_is_dropped(
    secured: SecuredBroker, sim: SimulatorHandle, start_worker: StartWorker
) -> None:
    worker = await start_worker(job_poll_schedule=[0.2, 0.4])
    sim.configure(time_scale=0.05)
    async with (
        event_tap(secured.admin) as events,
        Producer(secured.producer, "itwin.commands") as producer,
        asyncio.timeout(30),
    ):
        workspace = await producer.request("workspace.create", body({"name": "jobs"}))
        job = await producer.request(
            "job.create",
            body({
                "type": "Full", "name": "j", "workspaceId": workspace["result"]["id"],
                "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"}],
                "settings": {"outputs": ["OBJ"]},
            }),
        )  # fmt: skip
        job_id = job["result"]["id"]
        submit = await producer.publish("job.submit", body({"jobId": job_id}))
        # Someone with lax rights takes the submit's next poll id, through the default exchange.
        forged = Poll(job_id=job_id, command_id=submit, correlation_id="forged", seq=2)
        connection = await aio_pika.connect(secured.admin)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(
                aio_pika.Message(forged.model_dump_json().encode()),
                routing_key="itwin-worker.job.poll",
            )
        await until(lambda: any(e["type"] == "job.succeeded" for e in producer.events))
        await asyncio.sleep(0.5)  # time for anything that should not happen
    types = [e["type"] for e in producer.events if e["commandId"] == submit]
    assert (types[0], types[-1], types.count("job.succeeded")) == (
        "job.submitted", "job.succeeded", 1,
    )  # fmt: skip
    assert [e for e in events if e["correlationId"] == "forged"] == [], "the forged poll: nothing"
    [dropped] = log_lines(worker, "dropping a poll")
    assert dropped["exchange"] == ""
