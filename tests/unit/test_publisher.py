"""The publisher's judgement of a failed publish, on a fake broker: a channel closed by another
message is waited for and the publish sent again; a message refused twice is this command's
failure (its event replaced by an `EventRefused` failure with the same id, its reply copy
dropped); no event over MAX_EVENT_BYTES ever leaves."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiormq.exceptions import ChannelInvalidStateError, ChannelPreconditionFailed, DeliveryError
from faststream.rabbit import RabbitBroker
from pamqp.commands import Basic

from service.events import EncodedEvent, success
from service.publisher import BrokerPublisher
from service.settings import load_settings
from service.topology import Topology

REFUSAL = ChannelPreconditionFailed("PRECONDITION_FAILED - message size 70000 is larger")


class FakeBroker:
    """Fails the publishes to a routing key with the exceptions queued for it, in turn; notes
    which publishes were in flight together."""

    def __init__(self, failures: dict[str, list[Exception]] | None = None) -> None:
        self.failures = failures or {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.tries = 0
        self.in_flight: dict[str, set[str]] = {}
        self.attempts: list[tuple[str, set[str]]] = []
        """Each publish sent: its event id, and the others in flight with it."""

    async def publish(self, body: bytes, routing_key: str = "", **options: Any) -> None:
        self.tries += 1
        name = json.loads(body)["eventId"]
        alongside = set(self.in_flight)
        for others in self.in_flight.values():
            others.add(name)
        self.in_flight[name] = alongside
        self.attempts.append((name, alongside))
        try:
            await asyncio.sleep(0.01)  # waiting for the confirm
            queue = self.failures.get(routing_key, [])
            if queue:
                raise queue.pop(0)
            self.sent.append((routing_key, json.loads(body)))
        finally:
            del self.in_flight[name]


def publisher(broker: FakeBroker, **options: Any) -> BrokerPublisher:
    topology = Topology.from_settings(load_settings(client_id="id", client_secret="secret"))
    return BrokerPublisher(
        cast(RabbitBroker, broker),
        topology,
        failure_types={"workspace.created": "workspace.create.failed"},
        **options,
    )


def created(name: str = "w") -> EncodedEvent:
    event = success(
        "workspace.created",
        command_id="c1",
        correlation_id="c1",
        result={"id": "w1", "name": name},
        attempts=1,
        now=datetime.now(UTC),
    )
    return EncodedEvent.of(event)


async def test_a_publish_caught_in_another_messages_refusal_is_sent_again() -> None:
    broker = FakeBroker({"workspace.created": [REFUSAL]})
    event = created()
    await publisher(broker).publish(event, None)
    assert broker.sent == [("workspace.created", json.loads(event.body))]


async def test_a_channel_still_closed_is_waited_for() -> None:
    closed = ChannelInvalidStateError("closed")
    broker = FakeBroker({"workspace.created": [closed, closed, closed]})
    await publisher(broker).publish(created(), None)
    assert [key for key, _ in broker.sent] == ["workspace.created"]


async def test_a_nacked_publish_is_sent_again_until_the_broker_takes_it() -> None:
    """A quorum queue without a leader (for a second after a node is lost) nacks: that says
    nothing about the message, and it must not send the command back to its queue at once."""
    nack = DeliveryError(None, Basic.Nack(delivery_tag=1, multiple=True))
    broker = FakeBroker({"workspace.created": [nack, nack, nack]})
    event = created()
    await publisher(broker).publish(event, None)
    assert broker.sent == [("workspace.created", json.loads(event.body))]


class StuckChannelBroker(FakeBroker):
    """Nacks every publish until its channel is closed under aio-pika (then a new one, which
    the broker takes): RabbitMQ 3.10's quorum queues after a lost leader, on one channel."""

    def __init__(self) -> None:
        nack = DeliveryError(None, Basic.Nack(delivery_tag=1, multiple=True))
        super().__init__({"workspace.created": [nack] * 1000})
        self.renewed = 0
        self.config = SimpleNamespace(channel_manager=self)

    async def get_channel(self) -> StuckChannelBroker:
        return self

    async def get_underlay_channel(self) -> StuckChannelBroker:
        return self

    async def close(self) -> None:
        self.renewed += 1
        self.failures.clear()


async def test_a_channel_nacked_for_good_is_replaced() -> None:
    broker = StuckChannelBroker()
    event = created()
    await publisher(broker).publish(event, None)
    assert broker.renewed == 1
    assert broker.sent == [("workspace.created", json.loads(event.body))]


async def test_a_channel_that_stays_closed_fails_the_publish() -> None:
    broker = FakeBroker({"workspace.created": [ChannelInvalidStateError("closed")] * 100})
    with pytest.raises(ChannelInvalidStateError):
        await publisher(broker, reopen_wait=0.2).publish(created(), None)
    assert broker.sent == []


async def test_an_event_refused_twice_is_replaced_by_a_failure_with_its_id() -> None:
    broker = FakeBroker({"workspace.created": [REFUSAL, REFUSAL]})
    event = created()
    await publisher(broker).publish(event, None)
    [(key, document)] = broker.sent
    assert key == "workspace.create.failed"
    assert document["eventId"] == event.event_id
    assert document["type"] == "workspace.create.failed"
    assert document["error"]["code"] == "EventRefused"
    assert "PRECONDITION_FAILED" in document["error"]["message"]


async def test_a_refused_reply_copy_is_dropped_the_event_stays() -> None:
    reply_to = "amq.rabbitmq.reply-to.crafted"
    broker = FakeBroker({reply_to: [REFUSAL, REFUSAL]})
    await publisher(broker).publish(created(), reply_to)
    assert [key for key, _ in broker.sent] == ["workspace.created"]


async def test_an_event_over_max_event_bytes_never_leaves() -> None:
    broker = FakeBroker()
    event = created(name="n" * 70_000)
    await publisher(broker, max_event_bytes=65536).publish(event, None)
    [(key, document)] = broker.sent
    assert key == "workspace.create.failed"
    assert document["error"]["code"] == "EventRefused"
    assert "MAX_EVENT_BYTES (65536 bytes)" in document["error"]["message"]
    assert broker.tries == 1


async def test_a_publish_sent_again_goes_alone() -> None:
    broker = FakeBroker({"workspace.created": [REFUSAL]})
    events = [created(f"w{i}") for i in range(6)]
    one = publisher(broker)
    await asyncio.gather(*(one.publish(event, None) for event in events))
    assert len(broker.sent) == 6
    names = [name for name, _ in broker.attempts]
    [again] = [name for name in set(names) if names.count(name) == 2]
    first, second = [others for name, others in broker.attempts if name == again]
    assert first, "its first try went with the others"
    assert second == set(), "sent again alone"
