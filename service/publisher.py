"""Publishing on the broker: events, replies and dead letters, each confirmed before we go on.

Every publish is persistent and waits for the broker's confirm, so when the pipeline returns
(and the command is acked) its event is safely in RabbitMQ.

Everything goes through FastStream's `broker.publish` (publisher confirms on its channel), so
its middlewares see every publish. Going around it to the raw channel saved 5 % of the worker's
instructions per command: at the API's budget (83 calls/s for the fleet) about 0.006 of a core,
not worth a second way to publish.

That broker is the worker's publishing connection, not the consumers' (`service.app`). The
broker answers one bad publish by closing its channel (a message over its size limit), on
RabbitMQ 3.10 even its connection (a direct reply-to name it cannot decode), and every publish
in flight on it fails with the same error: who caused it cannot be told from the error. So a
publish that failed is sent again alone, once the channel is back, with no other publish in
flight (`Gate`): failing alone, it is this message the broker refuses (`Refused`), and that
stays this command's problem: its event is replaced by an `EventRefused` failure event with the
same id; a refused reply copy or dead letter is dropped with a log line (the event is on the
event exchange). The others were only caught in it, and go through on their second try. An
event larger than MAX_EVENT_BYTES is never sent at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import structlog
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelClosed,
    ChannelInvalidStateError,
    ConnectionChannelError,
    ConnectionCommandInvalid,
    ConnectionFrameError,
    ConnectionInternalError,
    ConnectionNotAllowed,
    ConnectionNotImplemented,
    ConnectionSyntaxError,
    ConnectionUnexpectedFrame,
    DeliveryError,
)
from faststream.rabbit import RabbitBroker, RabbitExchange

from service.delivery import (
    BROKER_HEADER_PREFIXES,
    DELAYED_ATTEMPT_HEADER,
    ERROR_CODE_HEADER,
    ERROR_MESSAGE_HEADER,
    EVENT_ID_HEADER,
    FAILED_AT_HEADER,
    ROUTING_KEY_HEADER,
    Delivery,
)
from service.errors import WorkerError
from service.events import EncodedEvent, refused
from service.limits import Limits
from service.topology import Topology

log = structlog.get_logger("itwin_worker.publisher")

JSON = "application/json"
REFUSALS = (
    ChannelClosed,  # PRECONDITION_FAILED (size), NOT_FOUND, ACCESS_REFUSED, ...
    ConnectionFrameError,
    ConnectionSyntaxError,
    ConnectionCommandInvalid,
    ConnectionChannelError,
    ConnectionUnexpectedFrame,
    ConnectionNotAllowed,
    ConnectionNotImplemented,
    ConnectionInternalError,  # RabbitMQ 3.10 on a direct reply-to name it cannot decode
)
"""How the broker answers a method it will not take: by closing the channel or connection."""
NOT_TAKEN = (ChannelInvalidStateError, AMQPConnectionError, DeliveryError)
"""The channel was closed already, the connection went away (a broker restart), or the broker
nacked the message (a quorum queue it routes to has no leader while a new one is elected, for
a second or so after a node is lost): nothing said about the message itself, it is sent again
until `reopen_wait` is spent. Treated as a crash, a nack sent the command back to its queue at
once, and each redelivery met the same election: five in a second dead-lettered it."""
FIRST_WAIT = 0.05
"""Seconds before trying again, doubled while the channel is still closed."""
NACKED_RENEW_SECONDS = 2.0
"""How long nacks may go on before the channel is replaced. On RabbitMQ 3.10 a channel that
published to a quorum queue while its leader was lost can stay refused by that queue for good
(every later publish nacked, minutes on end: tests/integration/test_rabbit_cluster.py saw it
about one run in two); a new channel is a new publisher to the queue, and is taken at once."""


class Refused(Exception):
    """The broker refused this message: it failed when it was the only one in flight."""


class Gate:
    """Publishes go through together; a publish sent again after a failure goes alone.

    The common case (nobody alone) takes no lock and no await: counters and two events.
    """

    def __init__(self) -> None:
        self._together = 0
        self._alone = 0
        """Publishes waiting to go alone, or going: none goes together meanwhile."""
        self._one_at_a_time = asyncio.Lock()
        self._quiet = asyncio.Event()
        """No publish going together."""
        self._quiet.set()
        self._open = asyncio.Event()
        """No publish waiting to go alone, or going."""
        self._open.set()

    @asynccontextmanager
    async def together(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._together += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._together -= 1
            if self._together == 0:
                self._quiet.set()

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        self._alone += 1
        self._open.clear()
        try:
            async with self._one_at_a_time:
                await self._quiet.wait()
                yield
        finally:
            self._alone -= 1
            if self._alone == 0:
                self._open.set()


class BrokerPublisher:
    def __init__(
        self,
        broker: RabbitBroker,
        topology: Topology,
        *,
        max_event_bytes: int = Limits.event_bytes,
        failure_types: Mapping[str, str] | None = None,
        reopen_wait: float = 30.0,
    ) -> None:
        """`failure_types`: the failure event type that stands in for each event type (other
        types stand in for themselves); `reopen_wait`: how long a publish waits in all for a
        closed channel to be open again before it fails."""
        self._broker = broker
        self._topology = topology
        self._max_event_bytes = max_event_bytes
        self._failure_types = dict(failure_types or {})
        self._reopen_wait = reopen_wait
        self._gate = Gate()

    async def publish(self, event: EncodedEvent, reply_to: str | None) -> None:
        """The event to the event exchange and to `reply_to`, which the caller has vetted
        (`service.trust`: a command's at delivery; a poll's was its command's)."""
        if len(event.body) > self._max_event_bytes:
            # Only an event recorded before the bound was set can get here: the pipeline and
            # the job follower never make one.
            event = self._stand_in(
                event,
                f"The {event.type} event ({len(event.body)} bytes) is larger than "
                f"MAX_EVENT_BYTES ({self._max_event_bytes} bytes); it was not published.",
            )
        try:
            await self._guarded(self._to_events, event)
        except Refused as refusal:
            log.error(
                "the broker refused an event; a failure event takes its place",
                event_type=event.type,
                reason=str(refusal),
            )
            event = self._stand_in(
                event,
                f"The broker refused the {event.type} event ({len(event.body)} bytes): {refusal}",
            )
            await self._guarded(self._to_events, event)
        if reply_to:
            try:
                await self._guarded(self._reply, event, reply_to)
            except Refused as refusal:
                log.warning(
                    "the broker refused the reply copy; the event is on the event exchange",
                    reason=str(refusal),
                )

    def _stand_in(self, event: EncodedEvent, message: str) -> EncodedEvent:
        failure_type = self._failure_types.get(event.type, event.type)
        return refused(event, failure_type, message, datetime.now(UTC))

    async def _guarded(self, publish: Callable[..., Awaitable[None]], *arguments: Any) -> None:
        """`publish(*arguments)`; after a failure, again alone (see the module), waiting up to
        `reopen_wait` for a closed channel, a lost connection or a queue's leader to be back."""
        try:
            async with self._gate.together():
                await publish(*arguments)
            return
        except (*REFUSALS, *NOT_TAKEN):
            pass
        waited, wait, nacked = 0.0, FIRST_WAIT, 0.0
        while True:
            await asyncio.sleep(wait)
            waited += wait
            wait = min(wait * 2, 1.0)
            async with self._gate.alone():
                try:
                    await publish(*arguments)
                    return
                except REFUSALS as exc:
                    raise Refused(str(exc) or type(exc).__name__) from None
                except DeliveryError:
                    if waited >= self._reopen_wait:
                        raise
                    nacked += wait
                    if nacked >= NACKED_RENEW_SECONDS:
                        nacked = 0.0
                        await self._renew_channel()
                except NOT_TAKEN:
                    if waited >= self._reopen_wait:
                        raise

    async def _renew_channel(self) -> None:
        """Close the publishing channel under aio-pika: its robust channel opens a new one."""
        log.warning("the broker keeps refusing publishes on this channel: opening a new one")
        channel = await self._broker.config.channel_manager.get_channel()
        with contextlib.suppress(*NOT_TAKEN, *REFUSALS):
            underlay = await channel.get_underlay_channel()
            await underlay.close()

    async def _to_events(self, event: EncodedEvent) -> None:
        await self._broker.publish(
            event.body,
            exchange=self._topology.events,
            routing_key=event.type,
            persist=True,
            mandatory=False,
            message_id=event.event_id,
            correlation_id=event.correlation_id,
            message_type=event.type,
            content_type=JSON,
            timestamp=datetime.now(UTC),
        )

    async def _reply(self, event: EncodedEvent, reply_to: str) -> None:
        # Not mandatory: a reply queue that is gone (or a direct reply-to whose producer left)
        # drops the copy; the event is on the event exchange either way.
        await self._broker.publish(
            event.body,
            routing_key=reply_to,
            persist=True,
            mandatory=False,
            message_id=event.event_id,
            correlation_id=event.correlation_id,
            message_type=event.type,
            content_type=JSON,
        )

    async def delay(self, delivery: Delivery, attempt: int, seconds: float) -> None:
        """Park the command in the delay queue; it expires back into its work queue through the
        retry exchange, by its own routing key (the one its work queue is bound with). Only
        known commands are delayed: an unknown one fails for good at once."""
        exchange, _ = self._topology.delays[seconds]
        headers = {DELAYED_ATTEMPT_HEADER: attempt}
        try:
            await self._guarded(self._republish, delivery, exchange, delivery.routing_key, headers)
        except Refused as refusal:
            # Crashed: the command comes back, tried again (its delivery limit bounds that).
            raise RuntimeError(f"the broker refused the delayed command: {refusal}") from None

    async def schedule_poll(self, poll: bytes, poll_id: str, delay: float | None) -> None:
        # Through the retry exchange, now or after the delay: the poll queue takes no other.
        topology = self._topology
        exchange = topology.retry if delay is None else topology.delays[delay][0]
        try:
            await self._guarded(self._poll, poll, poll_id, exchange)
        except Refused as refusal:
            raise RuntimeError(f"the broker refused a poll: {refusal}") from None

    async def _poll(self, poll: bytes, poll_id: str, exchange: RabbitExchange) -> None:
        await self._broker.publish(
            poll,
            exchange=exchange,
            routing_key=self._topology.poll_queue.name,  # its binding key on the retry exchange
            persist=True,
            mandatory=False,
            message_id=poll_id,
            correlation_id=poll_id,
            content_type=JSON,
        )

    async def dead_letter(
        self, delivery: Delivery, event: EncodedEvent, reason: WorkerError
    ) -> None:
        headers = {
            ROUTING_KEY_HEADER: delivery.routing_key,
            ERROR_CODE_HEADER: reason.code,
            ERROR_MESSAGE_HEADER: reason.message,
            EVENT_ID_HEADER: event.event_id,
            FAILED_AT_HEADER: datetime.now(UTC).isoformat(),
        }
        queue = self._topology.dead_letter_queue.name
        try:
            await self._guarded(self._republish, delivery, None, queue, headers)
        except Refused as refusal:
            log.error(
                "the broker refused the dead letter; the failure event still announces it",
                reason=str(refusal),
            )

    async def _republish(
        self,
        delivery: Delivery,
        exchange: RabbitExchange | None,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        """The command again, body and properties as received, plus `headers`."""
        kept = {
            name: value
            for name, value in delivery.headers.items()
            if not name.startswith(BROKER_HEADER_PREFIXES)
        }
        await self._broker.publish(
            delivery.body,
            exchange=exchange,
            routing_key=routing_key,
            persist=True,
            mandatory=False,
            message_id=delivery.message_id,
            correlation_id=delivery.correlation_id,
            reply_to=delivery.reply_to,
            content_type=delivery.content_type,
            headers={**kept, **headers},
        )
