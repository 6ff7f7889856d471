"""A small producer of commands, as other services would write one: used by `send` and `demo`.

It publishes to the command exchange exactly as the contract asks (persistent, JSON,
message_id, optional reply_to) and gets the events through RabbitMQ direct reply-to: no queue
to declare (so no configure permission), and the worker always honours it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from service.trust import DIRECT_REPLY_TO


class BrokerUnreachable(Exception):
    """RabbitMQ did not accept a connection; the message names the URL (without password)."""


class Producer:
    """Publishes commands and collects the events that come back to it."""

    def __init__(self, amqp_url: str, command_exchange: str) -> None:
        self._url = amqp_url
        self._exchange_name = command_exchange
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.headers: dict[str, dict[str, Any]] = {}
        """The AMQP headers of each event received, by event id (its message_id)."""
        self._arrived = asyncio.Condition()
        """Every event received, in arrival order, duplicates included."""

    async def __aenter__(self) -> Producer:
        try:
            self._connection = await aio_pika.connect(self._url, timeout=5)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            raise BrokerUnreachable(f"{type(exc).__name__}: {exc}") from None
        self._channel = await self._connection.channel(publisher_confirms=True)
        # Passive: a producer must not create the worker's exchange with the wrong arguments.
        self._exchange = await self._channel.get_exchange(self._exchange_name, ensure=True)
        # Direct reply-to, as RabbitMQ documents it: consumed without acks, and the commands
        # published on this same channel (the broker ties the reply address to it).
        replies = await self._channel.get_queue(DIRECT_REPLY_TO, ensure=False)
        await replies.consume(self._on_reply, no_ack=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        self.events.append(event)
        self.headers[str(message.message_id)] = dict(message.headers or {})
        async with self._arrived:
            self._arrived.notify_all()
        waiter = self._waiter(str(event.get("commandId")))
        if not waiter.done():
            waiter.set_result(event)

    def _waiter(self, message_id: str) -> asyncio.Future[dict[str, Any]]:
        if message_id not in self._pending:
            self._pending[message_id] = asyncio.get_running_loop().create_future()
        return self._pending[message_id]

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply: bool = True,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish one command; return its message_id."""
        assert self._exchange is not None, "use Producer as an async context manager"
        message_id = message_id or str(uuid.uuid4())
        await self._exchange.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                correlation_id=correlation_id,
                reply_to=DIRECT_REPLY_TO if reply else None,
                headers=dict(headers or {}),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
        )
        return message_id

    async def event_for(self, message_id: str) -> dict[str, Any]:
        """The first event of one command; bound the wait with `asyncio.timeout`."""
        return await asyncio.shield(self._waiter(message_id))

    async def nth_event(self, message_id: str, n: int) -> dict[str, Any]:
        """The command's n-th event (from 0): a followed job has several."""
        async with self._arrived:
            while True:
                mine = [e for e in self.events if e.get("commandId") == message_id]
                if len(mine) > n:
                    return mine[n]
                await self._arrived.wait()

    async def request(self, routing_key: str, body: bytes) -> dict[str, Any]:
        """Publish one command and wait for its event."""
        return await self.event_for(await self.publish(routing_key, body))


def dumps(document: Any) -> bytes:
    return json.dumps(document).encode()
