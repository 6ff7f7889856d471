"""Property: whatever lands in a command queue, exactly one event comes out, and the worker
keeps consuming. Bodies and AMQP properties are arbitrary (hypothesis), published straight
into every command queue through the default exchange.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aio_pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import Worker
from service.commands import COMMANDS
from service.simulator import SimulatorHandle
from tests.support import worker_settings

pytestmark = pytest.mark.slow

QUEUES = [f"itwin-worker.{spec.routing_key}" for spec in COMMANDS] + ["itwin-worker.unrouted"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
plausible = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values,
        "workspaceId": st.text(max_size=40) | json_values,
        "iTwinId": st.text(max_size=40),
        "displayName": st.text(max_size=300),
        "version": st.text(max_size=10),
        "class": st.sampled_from(["GeographicInformationSystem", "Storage", "x"]),
        "uri": st.text(max_size=30),
        "type": st.sampled_from(["Full", "Calibration", "Bogus"]),
        "inputs": json_values,
        "settings": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    plausible.map(lambda value: json.dumps(value).encode()),
)
header_values = st.one_of(st.text(max_size=20), st.integers(-5, 10), st.booleans())
messages = st.fixed_dictionaries(
    {
        "queue": st.sampled_from(QUEUES),
        "body": bodies,
        "message_id": st.none() | st.text(min_size=1, max_size=40),
        "content_type": st.none()
        | st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-8"])
        | st.text(max_size=20),
        "headers": st.dictionaries(
            st.sampled_from(
                ["x-itwin-delayed-attempt", "x-delivery-count", "x-itwin-routing-key", "x-any"]
            )
            | st.text(min_size=1, max_size=10),
            header_values,
            max_size=3,
        ),
    }
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(messages, min_size=10, max_size=30))
def test_every_message_yields_exactly_one_event(
    amqp_url: str, sim: SimulatorHandle, batch: list[dict[str, Any]]
) -> None:
    asyncio.run(_exactly_one_event_each(amqp_url, sim, batch))


async def _exactly_one_event_each(
    amqp_url: str, sim: SimulatorHandle, batch: list[dict[str, Any]]
) -> None:
    worker = Worker(worker_settings(amqp_url, sim, log_level="WARNING"))
    await worker.start()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        events = await channel.declare_queue(exclusive=True)
        await events.bind("itwin.events", routing_key="#")
        seen: Counter[str] = Counter()

        async def count(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            seen[json.loads(message.body)["correlationId"]] += 1

        await events.consume(count, no_ack=True)
        tags = []
        for index, message in enumerate(batch):
            tag = f"prop-{index}"
            message_id = f"{message['message_id']}-{index}" if message["message_id"] else None
            await channel.default_exchange.publish(
                aio_pika.Message(
                    message["body"],
                    message_id=message_id,
                    correlation_id=tag,
                    content_type=message["content_type"],
                    headers=message["headers"],
                ),
                routing_key=message["queue"],
            )
            tags.append(tag)
        async with asyncio.timeout(30):
            while not all(seen[tag] for tag in tags):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert {tag: seen[tag] for tag in tags} == dict.fromkeys(tags, 1)

        # Still consuming: a plain valid command after all that gets its event.
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"name": "after"}', message_id="after", correlation_id="after"),
            routing_key="itwin-worker.workspace.create",
        )
        async with asyncio.timeout(10):
            while not seen["after"]:
                await asyncio.sleep(0.05)
    finally:
        await connection.close()
        await worker.stop()
