"""Publishing on the broker: events, replies and dead letters, each confirmed before we go on.

Every publish is persistent and waits for the broker's confirm, so when the pipeline returns
(and the command is acked) its event is safely in RabbitMQ.
"""

from __future__ import annotations

from datetime import UTC, datetime

from faststream.rabbit import RabbitBroker, RabbitExchange

from service.errors import WorkerError
from service.events import Event, encode
from service.handlers import Delivery
from service.topology import Topology

JSON = "application/json"

# Headers a dead letter carries to say why it is there and where it came from.
ROUTING_KEY_HEADER = "x-itwin-routing-key"
ERROR_CODE_HEADER = "x-itwin-error-code"
ERROR_MESSAGE_HEADER = "x-itwin-error-message"
EVENT_ID_HEADER = "x-itwin-event-id"
FAILED_AT_HEADER = "x-itwin-failed-at"


class BrokerOutbox:
    def __init__(self, broker: RabbitBroker, topology: Topology) -> None:
        self._broker = broker
        self._topology = topology
        self._own_queue_prefix = topology.settings.queue_prefix

    async def publish(self, event: Event, reply_to: str | None) -> None:
        body = encode(event)
        await self._publish_event(body, event, self._topology.events, event.type)
        # A reply_to naming one of our own queues would feed our event back in as a command.
        if reply_to and not reply_to.startswith(self._own_queue_prefix):
            await self._publish_event(body, event, None, reply_to)

    async def _publish_event(
        self, body: bytes, event: Event, exchange: RabbitExchange | None, routing_key: str
    ) -> None:
        await self._broker.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            persist=True,
            mandatory=False,
            message_id=event.event_id,
            correlation_id=event.correlation_id,
            message_type=event.type,
            content_type=JSON,
        )

    async def dead_letter(self, delivery: Delivery, event: Event, reason: WorkerError) -> None:
        headers = {
            **delivery.headers,
            ROUTING_KEY_HEADER: delivery.routing_key,
            ERROR_CODE_HEADER: reason.code,
            ERROR_MESSAGE_HEADER: reason.message,
            EVENT_ID_HEADER: event.event_id,
            FAILED_AT_HEADER: datetime.now(UTC).isoformat(),
        }
        await self._broker.publish(
            delivery.body,
            routing_key=self._topology.dead_letter_queue.name,
            persist=True,
            mandatory=False,
            message_id=event.command_id,
            correlation_id=event.correlation_id,
            reply_to=delivery.reply_to,
            content_type=delivery.content_type,
            headers=headers,
        )
