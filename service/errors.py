"""One exception tree for everything that can end a command without a result.

Each class says, as data, what the failure event needs: the HTTP status (None when the API was
never reached), the error object, whether trying again later could help (`retriable`) and
whether the command is a fault to park in the dead-letter queue (`dead_letter`) rather than a
clean refusal by the API, which is an outcome like any other.

Every text an error carries is bounded when the error is made (`service.limits`): an answer or
a command can put a megabyte into a message, a target or a thousand details, and none of it may
reach an event, a dead letter's headers or a log line whole.

Also here, because it is pure: turning an HTTP answer into a result or one of these errors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from service.limits import (
    MAX_CODE_CHARACTERS,
    MAX_DETAIL_MESSAGE_CHARACTERS,
    MAX_DETAILS,
    MAX_MESSAGE_CHARACTERS,
    MAX_TARGET_CHARACTERS,
    clip,
)

# Answers that prove the request was not processed: safe to repeat even for a POST.
NOT_PROCESSED_STATUSES = frozenset({502, 503, 504})
# A 500 may have happened after the effect: only methods that are safe to repeat retry on it.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RATE_LIMIT_HEADERS = ("retry-after", "itwinplatform-ratelimit-retry-after-seconds")
# A retry-after further out than this is treated as garbage, not obeyed for a day.
MAX_RETRY_AFTER_SECONDS = 3600.0


class WorkerError(Exception):
    """Base of every failure that ends a command with a failure event."""

    code: str = "WorkerError"
    retriable: bool = False
    dead_letter: bool = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        target: str | None = None,
        details: Sequence[Mapping[str, Any]] = (),
        retriable: bool | None = None,
        dead_letter: bool | None = None,
    ) -> None:
        omitted = len(details) - MAX_DETAILS
        if omitted > 0:
            suffix = f" ({omitted} more details not listed)"
            message = clip(message, MAX_MESSAGE_CHARACTERS - len(suffix)) + suffix
        message = clip(message, MAX_MESSAGE_CHARACTERS)
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = clip(code, MAX_CODE_CHARACTERS)
        self.target = None if target is None else clip(target, MAX_TARGET_CHARACTERS)
        self.details = [_bounded(detail) for detail in details[:MAX_DETAILS]]
        if retriable is not None:
            self.retriable = retriable
        if dead_letter is not None:
            self.dead_letter = dead_letter
        self.attempts = 0
        """HTTP attempts made before this error; filled in by the API client."""

    def settled(self) -> WorkerError:
        """This error as a command's outcome, data from now on: without its traceback and the
        exceptions it chained. Their frames hold the command's body and the API's answer, and
        a caller's frame holds the error: a reference cycle, which only the garbage collector
        would free, long after (a flood of 1 MB commands kept hundreds of them in memory)."""
        self.__traceback__ = None
        self.__context__ = None
        self.__cause__ = None
        return self


def _bounded(detail: Mapping[str, Any]) -> dict[str, Any]:
    target = detail.get("target")
    return {
        "code": clip(str(detail.get("code", "")), MAX_CODE_CHARACTERS),
        "message": clip(str(detail.get("message", "")), MAX_DETAIL_MESSAGE_CHARACTERS),
        "target": clip(target, MAX_TARGET_CHARACTERS) if isinstance(target, str) else None,
    }


class InvalidCommand(WorkerError):
    """The body is not JSON or breaks a field rule; `details` name each bad field."""

    code = "InvalidCommand"


class UnknownCommand(WorkerError):
    """The routing key names no command this worker knows."""

    code = "UnknownCommand"


class Unauthorized(WorkerError):
    """No access token could be obtained: the token endpoint is down or refuses the client."""

    code = "Unauthorized"


class RetriesExhausted(WorkerError):
    """Transient failures or 429s outlasted the retry budget; trying later may succeed."""

    code = "RetriesExhausted"
    retriable = True


class OutcomeUnknown(WorkerError):
    """A request that may have taken effect lost its answer; repeating it could duplicate.

    Not retried automatically: the command goes to the dead-letter queue, where an operator
    can check the API and replay it deliberately.
    """

    code = "OutcomeUnknown"


class ResponseTooLarge(WorkerError):
    """The API's answer was larger than MAX_RESPONSE_BYTES, so it was not read; for a request
    that is safe to repeat (one that could not be safe is `OutcomeUnknown` instead)."""

    code = "ResponseTooLarge"


class ResultTooLarge(WorkerError):
    """The result would make an event larger than MAX_EVENT_BYTES; `target` is the resource's
    id when the answer had one."""

    code = "ResultTooLarge"


class EventRefused(WorkerError):
    """The broker refused the command's event itself (its size, or a channel error on that
    one publish): this failure event stands in for it. Not dead-lettered on its own account:
    a fault's dead letter went out before its event."""

    code = "EventRefused"
    dead_letter = False


class ApiError(WorkerError):
    """The API answered with an error object; it travels to the producer unchanged.

    A clean refusal (403, 404, 409, 422, ...) is an outcome, not a fault, so it is not
    dead-lettered; a 401 that survives a token refresh, or a 5xx, is.
    """

    code = "ApiError"
    dead_letter = False


class TransientError(WorkerError):
    """A failure the retry loop may repeat; it never reaches an event directly."""

    code = "TransientError"
    retriable = True


class RateLimited(TransientError):
    """A 429: the whole limiter pauses for `retry_after` seconds before anyone retries."""

    code = "RateLimited"

    def __init__(self, message: str, *, retry_after: float, status: int = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class TokenRejected(TransientError):
    """A 401 from the API: the cached token may be stale, so refresh it once and retry."""

    code = "TokenRejected"


def parse_retry_after(headers: Mapping[str, str], now: datetime, default: float) -> float:
    """Seconds to wait from a 429's headers: delta-seconds or an HTTP date, else `default`."""
    for name in RATE_LIMIT_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        raw = raw.strip()
        try:
            seconds = float(raw)
        except ValueError:
            try:
                when = parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - now).total_seconds()
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
    return default


def error_object(body: bytes) -> dict[str, Any] | None:
    """The API's `{"error": {...}}` object, or None when the body is not one."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can follow
        return None
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return None
    return error


def _details(error: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The API's detail objects, normalised so that a malformed one cannot break an event."""
    details = error.get("details")
    if not isinstance(details, list):
        return []
    normalised = []
    for detail in details:
        if isinstance(detail, dict):
            target = detail.get("target")
            normalised.append(
                {
                    "code": str(detail.get("code", "")),
                    "message": str(detail.get("message", "")),
                    "target": target if isinstance(target, str) else None,
                }
            )
    return normalised


def classify_failure(
    method: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    default_retry_after: float,
    repeatable: bool | None = None,
) -> WorkerError:
    """Turn an unsuccessful HTTP answer into the error the pipeline acts on.

    `repeatable`: whether this request is safe to repeat after a 500; None: as `method` says.
    """
    error = error_object(body)
    code = error["code"] if error else f"Http{status}"
    message = str(error.get("message", "")) if error else f"The API answered HTTP {status}."
    if status == 429:
        wait = parse_retry_after(headers, now, default_retry_after)
        return RateLimited(f"{code}: {message}", retry_after=wait)
    if status == 401:
        return TokenRejected(message, status=status, code=code)
    if repeatable is None:
        repeatable = method.upper() in IDEMPOTENT_METHODS
    transient = status in NOT_PROCESSED_STATUSES or (status >= 500 and repeatable)
    if transient:
        return TransientError(message, status=status, code=code)
    target = error.get("target") if error else None
    return ApiError(
        message,
        status=status,
        code=code,
        target=target if isinstance(target, str) else None,
        details=_details(error) if error else (),
        dead_letter=status >= 500,
    )
