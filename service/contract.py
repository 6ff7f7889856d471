"""The machine-readable contract in `schemas/`: one JSON Schema per command and per event, and
the AsyncAPI document of every channel and message (`asyncapi.json`, see `service.asyncapi`).

Generated from the models, so the files cannot say anything the worker does not do; a test
fails when the committed files drift from what this module produces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service import asyncapi, json_schemas

ASYNCAPI = "asyncapi.json"


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def _documents() -> dict[str, dict[str, Any]]:
    return {**json_schemas.schemas(), ASYNCAPI: asyncapi.document()}


def write(directory: Path) -> None:
    for relative, document in _documents().items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(document))


def drift(directory: Path) -> list[str]:
    """Files in `directory` that differ from, lack or outlive the generated contract."""
    expected = {relative: render(document) for relative, document in _documents().items()}
    present = {
        str(path.relative_to(directory)): path.read_text()
        for path in [*directory.glob("*/*.json"), *directory.glob(ASYNCAPI)]
    }
    return sorted(
        name for name in expected.keys() | present.keys() if expected.get(name) != present.get(name)
    )
