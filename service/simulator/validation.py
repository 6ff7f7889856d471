"""Declarative request-body checks and the per-page 422 answer.

A body is checked against a small schema tree (`Object`, `ListOf`, `Value`) that yields the path
of every bad field, so each endpoint states its rules as a table and words the details as its
page does. An optional field given as JSON null counts as absent, as the real API treats it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request

from .errors import ApiError, Detail, ErrorBody, detail

Check = Callable[[Any], bool]

BODY_NOT_AN_OBJECT = "The request body must be a JSON object."


class Spec(Protocol):
    def errors(self, value: Any, path: str) -> list[str]:
        """Paths of the bad fields in `value`, which sits at `path`; empty when it is valid."""
        ...


@dataclass(frozen=True)
class Value:
    check: Check

    def errors(self, value: Any, path: str) -> list[str]:
        return [] if self.check(value) else [path]


@dataclass(frozen=True)
class ListOf:
    item: Spec
    min_items: int = 0

    def errors(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list) or len(value) < self.min_items:
            return [path]
        return [
            bad for i, item in enumerate(value) for bad in self.item.errors(item, f"{path}[{i}]")
        ]


@dataclass(frozen=True)
class Field:
    name: str
    spec: Spec
    required: bool = True


class Object:
    """A JSON object with known fields; fields it does not name are ignored, not refused."""

    def __init__(self, *fields: Field) -> None:
        self.fields = fields

    def errors(self, value: Any, path: str = "") -> list[str]:
        if not isinstance(value, dict):
            return [path]
        bad: list[str] = []
        for field in self.fields:
            field_path = f"{path}.{field.name}" if path else field.name
            field_value = value.get(field.name)
            if field_value is None:
                if field.required:
                    bad.append(field_path)
                continue
            bad.extend(field.spec.errors(field_value, field_path))
        return bad


def text(value: Any) -> bool:
    return isinstance(value, str)


def non_empty_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def boolean(value: Any) -> bool:
    return isinstance(value, bool)


def non_negative_number(value: Any) -> bool:
    # bool is an int subclass, but `true` is not a number in JSON.
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def integer_between(low: int, high: int) -> Check:
    def check(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    return check


def one_of(choices: Collection[str]) -> Check:
    allowed = frozenset(choices)

    def check(value: Any) -> bool:
        return isinstance(value, str) and value in allowed

    return check


def _refuse_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which are not JSON and could not be echoed back.
    raise ValueError(f"{name} is not valid JSON")


@dataclass(frozen=True)
class Unprocessable:
    """One page's answer to a bad body: its error body, the detail code it uses for a bad value,
    and its status (422 on the v1 pages, 400 on the v2 ones)."""

    body: ErrorBody
    invalid_code: str
    status: int = 422

    def error(self, details: list[Detail]) -> ApiError:
        return ApiError(self.status, self.body, details)

    async def json_object(self, request: Request) -> dict[str, Any]:
        """The request body as a JSON object, or this page's 422."""
        try:
            value = json.loads(await request.body(), parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise self.error([detail(self.invalid_code, BODY_NOT_AN_OBJECT)])
        return value
