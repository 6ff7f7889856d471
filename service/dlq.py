"""Dead-letter tooling: see what is in the dead-letter queue and why; send commands back.

Messages are taken with basic.get and held unacked while we look, so each is seen once per run;
whatever is not replayed goes back to the queue (requeued) when we are done.

Replays go to the replay exchange, which only operators may write to: the worker believes the
replay header only on messages that came through it, so no producer can force a fresh attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from service.delivery import (
    ERROR_CODE_HEADER,
    ERROR_MESSAGE_HEADER,
    FAILED_AT_HEADER,
    REPLAY_HEADER,
    ROUTING_KEY_HEADER,
)


@dataclass(frozen=True)
class DeadLetter:
    command_id: str
    routing_key: str
    error_code: str
    error_message: str
    failed_at: str
    reason: str
    """`worker` when the worker parked it; the broker's x-death reason otherwise."""

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadLetter:
        headers: dict[str, Any] = dict(message.headers or {})
        deaths = headers.get("x-death")
        broker_reason = ""
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            broker_reason = str(deaths[0].get("reason", ""))
        return cls(
            command_id=message.message_id or "",
            routing_key=_text(headers.get(ROUTING_KEY_HEADER)) or message.routing_key or "",
            error_code=_text(headers.get(ERROR_CODE_HEADER)),
            error_message=_text(headers.get(ERROR_MESSAGE_HEADER)),
            failed_at=_text(headers.get(FAILED_AT_HEADER)),
            reason="worker" if ERROR_CODE_HEADER in headers else broker_reason or "unknown",
        )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def amqp_user(amqp_url: str) -> str:
    """The RabbitMQ user an AMQP URL logs in as (aio-pika's default when it names none)."""
    username = urlsplit(amqp_url).username
    return unquote(username) if username else "guest"


class DeadLetters:
    """The dead-letter queue, seen through `entries` and `replay`."""

    def __init__(self, amqp_url: str, queue: str, replay_exchange: str) -> None:
        self._url = amqp_url
        self._queue_name = queue
        self._exchange_name = replay_exchange

    async def entries(self) -> list[DeadLetter]:
        return [letter for letter, _ in await self._visit(replay_ids=None)]

    async def replay(self, ids: Sequence[str] | None) -> list[DeadLetter]:
        """Send matching commands (all when `ids` is None) to the replay exchange, each with
        its original routing key. One the broker did not take stays in the queue."""
        return [letter for letter, replayed in await self._visit(ids or "all") if replayed]

    async def _visit(self, replay_ids: Sequence[str] | str | None) -> list[tuple[DeadLetter, bool]]:
        connection = await aio_pika.connect(self._url, timeout=5)
        seen: list[tuple[DeadLetter, bool]] = []
        held: list[AbstractIncomingMessage] = []
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.get_queue(self._queue_name, ensure=True)
            exchange = await channel.get_exchange(self._exchange_name, ensure=True)
            try:
                while (message := await queue.get(no_ack=False, fail=False)) is not None:
                    letter = DeadLetter.of(message)
                    wanted = replay_ids == "all" or (
                        replay_ids is not None and letter.command_id in replay_ids
                    )
                    replayed = False
                    if wanted and letter.routing_key:
                        confirmation = await exchange.publish(
                            _replayed(message), routing_key=letter.routing_key, mandatory=True
                        )
                        # A returned message routed nowhere: not replayed, kept.
                        replayed = isinstance(confirmation, Basic.Ack)
                    if replayed:
                        await message.ack()
                    else:
                        held.append(message)
                    seen.append((letter, replayed))
            finally:
                # A channel the broker closed (access refused) has requeued them itself.
                if not channel.is_closed:
                    for message in held:
                        await message.nack(requeue=True)
        return seen


def _replayed(message: AbstractIncomingMessage) -> aio_pika.Message:
    headers = {
        name: value
        for name, value in (message.headers or {}).items()
        if not name.startswith(("x-itwin-", "x-death", "x-first-death", "x-last-death"))
        and name != "x-delivery-count"
    }
    headers[REPLAY_HEADER] = True
    return aio_pika.Message(
        message.body,
        headers=headers,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
