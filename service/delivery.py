"""One broker message as the pipeline sees it, and every header name the worker reads or writes.

`delivery_from` is the only place that looks at the broker's message (aio-pika's, as the
consumers get it): the body as sent, the AMQP properties, and the headers and `reply_to` as
`service.trust` lets them count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from service.trust import Trust

# Set by quorum queues on every delivery: how often this message was delivered before.
DELIVERY_COUNT_HEADER = "x-delivery-count"
# The worker's own; they count only through its own exchanges (`service.trust`).
DELAYED_ATTEMPT_HEADER = "x-itwin-delayed-attempt"
"""How many delayed redeliveries the command has had."""
REPLAY_HEADER = "x-itwin-replay"
"""Set by `itwin-worker dlq replay`: work the command afresh, whatever was recorded."""
# What a dead letter carries to say why it is there and where it came from.
ROUTING_KEY_HEADER = "x-itwin-routing-key"
ERROR_CODE_HEADER = "x-itwin-error-code"
ERROR_MESSAGE_HEADER = "x-itwin-error-message"
EVENT_ID_HEADER = "x-itwin-event-id"
FAILED_AT_HEADER = "x-itwin-failed-at"
BROKER_HEADER_PREFIXES = ("x-delivery-count", "x-death", "x-first-death-", "x-last-death-")
"""The broker's own bookkeeping of a delivery: a republished command starts afresh."""


@dataclass(frozen=True)
class Delivery:
    """What the pipeline needs of one broker message, whatever library delivered it."""

    body: bytes
    routing_key: str
    queue: str = ""
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    """The headers the worker may act on (see `service.trust`)."""
    ignored_headers: tuple[str, ...] = ()
    """The worker's own headers, sent by someone else: names only, made printable."""
    refused_reply_to: str | None = None
    """A reply_to outside REPLY_TO_PATTERN (then `reply_to` is None), made printable."""
    id_made_up: bool = False
    """The producer set no message_id; the pipeline made one up (nothing to deduplicate by)."""

    def header_int(self, name: str) -> int:
        value = self.headers.get(name)
        return value if isinstance(value, int) and value >= 0 else 0

    @property
    def delivery_count(self) -> int:
        return self.header_int(DELIVERY_COUNT_HEADER)

    @property
    def delayed_attempt(self) -> int:
        return self.header_int(DELAYED_ATTEMPT_HEADER)

    @property
    def replay(self) -> bool:
        return bool(self.headers.get(REPLAY_HEADER))


def delivery_from(
    raw: AbstractIncomingMessage, queue: str, trust: Trust, routing_key: str | None = None
) -> Delivery:
    """The delivery as the pipeline may act on it; `routing_key` is the command queue's own
    (whichever exchange the message came through), None on the unrouted queue."""
    # The exchange is the broker's record of where the message was published, not a header.
    vetted = trust.vet(raw.exchange or "", raw.headers or {}, raw.reply_to)
    return Delivery(
        body=raw.body,
        routing_key=routing_key or raw.routing_key or "",
        queue=queue,
        message_id=raw.message_id,
        correlation_id=raw.correlation_id,
        reply_to=vetted.reply_to,
        content_type=raw.content_type,
        headers=vetted.headers,
        ignored_headers=vetted.ignored_headers,
        refused_reply_to=vetted.refused_reply_to,
    )
