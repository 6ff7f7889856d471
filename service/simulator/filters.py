"""The `$filter` of the v2 job list: the subset of OData the facts name, parsed and applied.

`field op value [and field op value]...`, with the fields `id, iTwinId, name, email, type,
state, createdDateTime`, the operators `eq ne lt le gt ge` and `and` (case-insensitive words, as
OData's). A value is a string literal in single quotes (a quote inside doubled) or a bare word:
a GUID, a date and time, or a state or type name. `createdDateTime` compares as a moment (a
value with or without fractions, `Z` or an offset); ids compare without regard to case; other
strings exactly. `or`, parentheses and functions are refused: the simulator does not do them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

FIELDS = frozenset({"id", "iTwinId", "name", "email", "type", "state", "createdDateTime"})
_CASE_INSENSITIVE = frozenset({"id", "iTwinId"})
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}
MAX_FILTER_LENGTH = 4096


class FilterError(ValueError):
    """The filter is not one the simulator understands; the message says where."""


@dataclass(frozen=True)
class Condition:
    field: str
    operator: str
    value: str | datetime

    def holds(self, record: Mapping[str, Any]) -> bool:
        actual = record.get(self.field)
        if actual is None:
            return False
        expected = self.value
        if self.field in _CASE_INSENSITIVE and isinstance(expected, str):
            actual, expected = str(actual).lower(), expected.lower()
        return _OPERATORS[self.operator](actual, expected)


def _words(text: str) -> list[str]:
    """The filter's words; a quoted literal is one word, still in its quotes."""
    words: list[str] = []
    position = 0
    while position < len(text):
        if text[position] == " ":
            position += 1
            continue
        if text[position] == "'":
            end = position + 1
            while True:
                end = text.find("'", end)
                if end == -1:
                    raise FilterError("a string literal is not closed")
                if text.startswith("''", end):
                    end += 2
                    continue
                break
            words.append(text[position : end + 1])
            position = end + 1
            continue
        end = text.find(" ", position)
        end = len(text) if end == -1 else end
        words.append(text[position:end])
        position = end
    return words


def _literal(word: str) -> str:
    if word.startswith("'"):
        return word[1:-1].replace("''", "'")
    if any(character in word for character in "()'"):
        raise FilterError(f"'{word}' is not a value the simulator understands")
    return word


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(f"'{text}' is not a date and time") from None
    if moment.tzinfo is None:
        raise FilterError(f"'{text}' has no time zone")
    return moment


def parse_filter(text: str) -> list[Condition]:
    """The conditions of `text`, all of which must hold; `FilterError` if it is not one."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"a filter is at most {MAX_FILTER_LENGTH} characters")
    words = _words(text)
    conditions = []
    position = 0
    while True:
        if len(words) < position + 3:
            raise FilterError("the filter ends inside a condition")
        field_name, op, value = words[position : position + 3]
        if field_name not in FIELDS:
            raise FilterError(f"'{field_name}' is not a field jobs can be filtered by")
        if op.lower() not in _OPERATORS:
            raise FilterError(f"'{op}' is not an operator ({', '.join(_OPERATORS)})")
        literal = _literal(value)
        typed = _moment(literal) if field_name == "createdDateTime" else literal
        conditions.append(Condition(field_name, op.lower(), typed))
        position += 3
        if position == len(words):
            return conditions
        if words[position].lower() != "and":
            raise FilterError(f"'{words[position]}' where 'and' was expected (only 'and' is)")
        position += 1
