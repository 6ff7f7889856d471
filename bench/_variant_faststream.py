"""Variant c of `bench.throughput`: a bare FastStream subscriber + plain httpx.

The same queue object, channel prefetch, ack policy, decoder and confirmed persistent publish
as the worker, and nothing of its pipeline (no validation, limiter, Redis, logs). Its own
module so that variants a and b do not load FastStream. Run as
`python -m bench._variant_faststream` with the BENCH_* variables of `bench._variants`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from typing import Any

from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitMessage,
    RabbitQueue,
)

from bench._variants import (
    EVENT_TYPE,
    GRACE_SECONDS,
    JSON,
    READY_MARKER,
    Call,
    Config,
    create_workspace,
    event_body,
    http_client,
)


async def _raw_body(message: StreamMessage[Any]) -> bytes:
    return message.body


def build_broker(config: Config, call: Call) -> RabbitBroker:
    """The broker with one subscriber: call the API, publish the event; FastStream acks."""
    broker = RabbitBroker(
        config.amqp_url,
        default_channel=Channel(prefetch_count=config.prefetch),
        graceful_timeout=GRACE_SECONDS,
        logger=None,
    )
    events = RabbitExchange(config.event_exchange, type=ExchangeType.TOPIC, declare=False)
    queue = RabbitQueue(config.queue, queue_type=QueueType.QUORUM, declare=False)

    @broker.subscriber(queue, ack_policy=AckPolicy.NACK_ON_ERROR, no_reply=True, decoder=_raw_body)
    async def consume(body: bytes, message: RabbitMessage) -> None:
        raw = message.raw_message
        result = await call()
        await broker.publish(
            event_body(raw.message_id, raw.correlation_id, result),
            exchange=events,
            routing_key=EVENT_TYPE,
            persist=True,
            mandatory=False,
            message_id=str(uuid.uuid4()),
            correlation_id=raw.correlation_id or raw.message_id,
            message_type=EVENT_TYPE,
            content_type=JSON,
        )

    return broker


async def main_async() -> None:
    config = Config.from_environment()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with http_client(config) as http:
        broker = build_broker(config, await create_workspace(http, config))
        await broker.start()
        print(READY_MARKER, flush=True)
        try:
            await stop.wait()
        finally:
            await broker.stop()


def main() -> int:
    asyncio.run(main_async())
    return 0


if __name__ == "__main__":
    sys.exit(main())
