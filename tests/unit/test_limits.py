"""Sizes: the texts an error copies are cut, a failure event always fits in the smallest event
bound, a result too large for an event becomes a failure naming the limit, status and id."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from service.errors import ApiError, InvalidCommand, classify_failure
from service.events import EncodedEvent, failure, oversized, refused, success
from service.limits import (
    MAX_CODE_CHARACTERS,
    MAX_DETAIL_MESSAGE_CHARACTERS,
    MAX_DETAILS,
    MAX_MESSAGE_CHARACTERS,
    MAX_TARGET_CHARACTERS,
    MIN_EVENT_BYTES,
    clip,
)
from service.settings import SettingsError, load_settings

NOW = datetime(2026, 1, 1, tzinfo=UTC)
AMQP_SHORT_STRING = 255
"""message_id and correlation_id are AMQP short strings: at most 255 bytes."""


def test_clip_keeps_short_text_and_marks_a_cut() -> None:
    assert clip("abc", 3) == "abc"
    assert clip("abcdef", 4) == "abc…"
    assert len(clip("x" * 10_000, 100)) == 100


def test_an_error_keeps_its_first_details_and_says_how_many_it_left_out() -> None:
    details = [{"code": "UnknownProperty", "message": "m", "target": f"k{i}"} for i in range(5000)]
    error = InvalidCommand("The body is invalid.", details=details)
    assert len(error.details) == MAX_DETAILS
    assert error.details[0] == {"code": "UnknownProperty", "message": "m", "target": "k0"}
    assert error.message == f"The body is invalid. ({5000 - MAX_DETAILS} more details not listed)"


def test_an_answers_error_object_is_cut_to_size() -> None:
    body = json.dumps(
        {
            "error": {
                "code": "C" * 10_000,
                "message": "M" * 1_000_000,
                "target": "T" * 10_000,
                "details": [{"code": "D", "message": "m" * 10_000, "target": "t" * 10_000}] * 50,
            }
        }
    ).encode()
    error = classify_failure("POST", 422, {}, body, now=NOW, default_retry_after=1.0)
    assert isinstance(error, ApiError)
    assert len(error.code) == MAX_CODE_CHARACTERS
    assert len(error.message) == MAX_MESSAGE_CHARACTERS
    assert error.target is not None
    assert len(error.target) == MAX_TARGET_CHARACTERS
    assert len(error.details) == MAX_DETAILS
    assert len(error.details[0]["message"]) == MAX_DETAIL_MESSAGE_CHARACTERS


def test_the_largest_failure_event_fits_in_the_smallest_event_bound() -> None:
    # Control characters cost JSON six bytes each (\u0001), more than any other character.
    worst = "\u0001" * 100_000
    details = [{"code": worst, "message": worst, "target": worst}] * (MAX_DETAILS + 100)
    error = ApiError(worst, status=422, code=worst, target=worst, details=details)
    event = failure(
        "x" * AMQP_SHORT_STRING,
        command_id="\u0001" * AMQP_SHORT_STRING,
        correlation_id="\u0001" * AMQP_SHORT_STRING,
        error=error,
        now=NOW,
    )
    assert len(EncodedEvent.of(event).body) <= MIN_EVENT_BYTES


def created(result: dict[str, object]) -> EncodedEvent:
    return EncodedEvent.of(
        success(
            "workspace.created",
            command_id="c1",
            correlation_id="c1",
            result=result,
            attempts=1,
            now=NOW,
        )
    )


def test_a_result_that_fits_stays_a_success() -> None:
    event = success(
        "workspace.created",
        command_id="c1",
        correlation_id="c1",
        result={"id": "w1", "name": "w"},
        attempts=1,
        now=NOW,
    )
    assert oversized(event, 1024, 201) is None


@pytest.mark.parametrize(("resource", "target"), [("w1", "w1"), (42, "42"), (None, None)])
def test_a_result_too_large_names_the_limit_the_status_and_the_id(
    resource: object, target: str | None
) -> None:
    result = {"name": "n" * 5000} if resource is None else {"id": resource, "name": "n" * 5000}
    event = success(
        "workspace.created", command_id="c1", correlation_id="c1", result=result, attempts=2,
        now=NOW,
    )  # fmt: skip
    error = oversized(event, 4096, 201)
    assert error is not None
    assert (error.code, error.status, error.target, error.attempts) == (
        "ResultTooLarge", 201, target, 2,
    )  # fmt: skip
    assert "MAX_EVENT_BYTES (4096 bytes)" in error.message
    assert "HTTP 201" in error.message
    assert error.dead_letter
    assert not error.retriable


def test_a_refused_event_is_replaced_by_a_failure_with_the_same_id() -> None:
    event = created({"id": "w1", "name": "w"})
    stand_in = refused(event, "workspace.create.failed", "The broker refused it.", NOW)
    document = json.loads(stand_in.body)
    assert (stand_in.event_id, stand_in.type) == (event.event_id, "workspace.create.failed")
    assert document["eventId"] == event.event_id
    assert document["attempts"] == 1
    assert document["error"]["code"] == "EventRefused"
    assert document["error"]["status"] is None
    assert document["error"]["message"] == "The broker refused it."


def test_the_settings_defaults_are_the_contracts_and_the_event_bound_has_a_floor() -> None:
    settings = load_settings(client_id="id", client_secret="secret")
    assert (
        settings.max_command_bytes, settings.max_response_bytes, settings.max_event_bytes,
    ) == (1_048_576, 8_388_608, 1_048_576)  # fmt: skip
    with pytest.raises(SettingsError, match="ITWIN_WORKER_MAX_EVENT_BYTES"):
        load_settings(client_id="id", client_secret="secret", max_event_bytes=MIN_EVENT_BYTES - 1)
