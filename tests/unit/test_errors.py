"""Classification of API answers: which are outcomes, which are retried, which are faults."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from service.errors import (
    ApiError,
    RateLimited,
    TokenRejected,
    TransientError,
    classify_failure,
    parse_retry_after,
)

NOW = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


def _classify(method: str, status: int, body: object = None, **headers: str) -> object:
    raw = json.dumps(body).encode() if body is not None else b""
    return classify_failure(method, status, headers, raw, now=NOW, default_retry_after=5.0)


def test_api_refusal_keeps_the_api_error_object() -> None:
    body = {
        "error": {
            "code": "InvalidiTwinsRequest",
            "message": "Cannot add iTwin Repository.",
            "details": [
                {"code": "InvalidValue", "message": "Class value is incorrect.", "target": "class"}
            ],
        }
    }
    error = _classify("POST", 422, body)
    assert isinstance(error, ApiError)
    assert (error.status, error.code, error.message) == (
        422,
        "InvalidiTwinsRequest",
        "Cannot add iTwin Repository.",
    )
    assert error.details == body["error"]["details"]
    assert not error.retriable
    assert not error.dead_letter


@pytest.mark.parametrize("status", [403, 404, 409, 422])
def test_clean_refusals_are_outcomes_not_dead_letters(status: int) -> None:
    error = _classify("POST", status, {"error": {"code": "X", "message": "m", "target": "t"}})
    assert isinstance(error, ApiError)
    assert error.target == "t"
    assert not error.dead_letter


@pytest.mark.parametrize("status", [502, 503, 504])
def test_not_processed_statuses_are_transient_for_any_method(status: int) -> None:
    assert type(_classify("POST", status)) is TransientError


def test_500_is_retried_only_for_methods_safe_to_repeat() -> None:
    assert type(_classify("GET", 500)) is TransientError
    post = _classify("POST", 500, {"error": {"code": "InternalServerError", "message": "m"}})
    assert isinstance(post, ApiError)
    assert post.dead_letter
    assert post.code == "InternalServerError"


def test_a_request_can_say_it_is_safe_to_repeat_whatever_its_method() -> None:
    def classify(method: str, repeatable: bool | None) -> object:
        return classify_failure(
            method, 500, {}, b"", now=NOW, default_retry_after=5.0, repeatable=repeatable
        )

    assert type(classify("PATCH", True)) is TransientError
    assert isinstance(classify("PATCH", None), ApiError)
    assert isinstance(classify("DELETE", False), ApiError)


def test_401_asks_for_a_token_refresh() -> None:
    error = _classify("GET", 401, {"error": {"code": "HeaderNotFound", "message": "m"}})
    assert isinstance(error, TokenRejected)
    assert error.code == "HeaderNotFound"


@pytest.mark.parametrize("code", ["TooManyRequests", "RateLimitExceeded"])
def test_429_carries_the_retry_after(code: str) -> None:
    error = _classify(
        "POST", 429, {"error": {"code": code, "message": "m"}}, **{"retry-after": "7"}
    )
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0
    assert code in error.message


def test_non_json_error_body_gets_a_status_code() -> None:
    error = classify_failure("POST", 418, {}, b"<html>", now=NOW, default_retry_after=5.0)
    assert isinstance(error, ApiError)
    assert (error.code, error.details) == ("Http418", [])


def test_malformed_details_are_normalised() -> None:
    body = {"error": {"code": "C", "message": "m", "details": [{"code": 3}, "junk", {"target": 1}]}}
    error = _classify("POST", 422, body)
    assert isinstance(error, ApiError)
    assert error.details == [
        {"code": "3", "message": "", "target": None},
        {"code": "", "message": "", "target": None},
    ]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"itwinplatform-ratelimit-retry-after-seconds": "3"}, 3.0),
        ({"retry-after": "Tue, 24 Nov 2026 10:00:30 GMT"}, 30.0),
        ({"retry-after": "Tue, 24 Nov 2026 09:00:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, 5.0),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "nan"}, 5.0),
        ({"retry-after": "999999"}, 3600.0),
        ({}, 5.0),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float) -> None:
    assert parse_retry_after(headers, NOW, 5.0) == expected
