"""The sizes of what goes in and out: commands, API answers, events, and the texts inside them.

Three bounds are the operator's (settings, contract.md "Limits on what goes in and out"): a
command body over `command_bytes` is refused unread, an API answer is not read past
`response_bytes`, and no event is larger than `event_bytes`. The texts an event copies from an
answer or a validation error (message, code, target, details) are cut to fixed lengths here, so
a failure event always fits in `MIN_EVENT_BYTES` whatever it copies: the smallest `event_bytes`
the settings allow.

Pure values and arithmetic; the parts that read, parse and publish apply them.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

MAX_MESSAGE_CHARACTERS = 1000
"""An error's message, as copied from an answer or a validation error."""
MAX_DETAIL_MESSAGE_CHARACTERS = 300
MAX_CODE_CHARACTERS = 64
MAX_TARGET_CHARACTERS = 128
MAX_DETAILS = 16
"""Details listed in one error; the message says how many more there were."""
MIN_EVENT_BYTES = 64 * KIB
"""The smallest event bound allowed: the largest failure event, made of the texts above at
their longest (each character escaped by JSON, 6 bytes) and AMQP short strings for the ids
(255 bytes each), is about 57 KiB (tests/unit/test_limits.py builds it)."""
CUT_MARK = "…"
MAX_TOKEN_ANSWER_BYTES = 64 * KIB
"""The token endpoint's answer: a JWT with its claims is a few KiB."""


@dataclass(frozen=True)
class Limits:
    """The operator's three bounds, in bytes (defaults: the contract's)."""

    command_bytes: int = 1 * MIB
    """A command body larger than this is refused unread (`InvalidCommand`)."""
    response_bytes: int = 8 * MIB
    """An API answer's body is not read past this."""
    event_bytes: int = 1 * MIB
    """No event is larger; a result that would be becomes a failure event."""


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters (the last one a cut mark) when it is longer."""
    if len(text) <= limit:
        return text
    return text[: limit - len(CUT_MARK)] + CUT_MARK
