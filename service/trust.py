"""What the worker believes of a delivery, by where it came from.

The `x-itwin-*` headers steer the worker (a replay ignores a recorded outcome, a delayed attempt
counts against the retry schedule), so they count only on messages that came through the
worker's own exchanges: the retry exchange (delay queues dead-letter through it) and the replay
exchange (`itwin-worker dlq replay`). RabbitMQ permissions let no producer write to those; the
exchange is the broker's record of the publish, read from the delivery, never from a header.

`reply_to` makes the worker publish into a queue a producer names, so only values matching
`REPLY_TO_PATTERN` (and RabbitMQ direct reply-to) are honoured, and never the worker's own
queues: the event would come back in as a command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OWN_HEADER_PREFIX = "x-itwin-"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
"""RabbitMQ's pseudo-queue; the broker rewrites it to `amq.rabbitmq.reply-to.<token>`."""
_LOGGED_NAMES = 8
_LOGGED_CHARACTERS = 120


def printable(value: str, limit: int = _LOGGED_CHARACTERS) -> str:
    """A hostile string made safe for a log line: cut short, control and non-ASCII escaped."""
    shown = value[:limit].encode("unicode_escape").decode("ascii")
    return shown + "..." if len(value) > limit else shown


@dataclass(frozen=True)
class Vetted:
    """A delivery's headers and reply_to as the worker may act on them."""

    headers: dict[str, Any]
    reply_to: str | None
    ignored_headers: tuple[str, ...] = ()
    """Names (made printable) of the worker's own headers that did not count."""
    refused_reply_to: str | None = None
    """The reply_to that was not honoured, made printable."""


@dataclass(frozen=True)
class Trust:
    own_exchanges: frozenset[str]
    reply_to_pattern: re.Pattern[str]
    own_queue_prefix: str

    @classmethod
    def of(
        cls, own_exchanges: frozenset[str], reply_to_pattern: str, own_queue_prefix: str
    ) -> Trust:
        return cls(own_exchanges, re.compile(reply_to_pattern), own_queue_prefix)

    def vet(self, exchange: str, headers: Mapping[str, Any], reply_to: str | None) -> Vetted:
        kept, ignored = dict(headers), []
        if exchange not in self.own_exchanges:
            ignored = [name for name in kept if name.lower().startswith(OWN_HEADER_PREFIX)]
            for name in ignored:
                del kept[name]
        refused = None
        if reply_to and not self.reply_allowed(reply_to):
            refused, reply_to = printable(reply_to), None
        names = tuple(printable(name, 64) for name in sorted(ignored)[:_LOGGED_NAMES])
        return Vetted(kept, reply_to or None, names, refused)

    def reply_allowed(self, reply_to: str) -> bool:
        if self.own_queue_prefix and reply_to.startswith(self.own_queue_prefix):
            return False
        if reply_to.startswith(f"{DIRECT_REPLY_TO}."):
            return True
        return self.reply_to_pattern.fullmatch(reply_to) is not None
