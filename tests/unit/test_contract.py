"""The committed `schemas/` must be exactly what the models generate."""

from __future__ import annotations

import json
from pathlib import Path

from service import contract
from service.commands import COMMANDS

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_models() -> None:
    stale = contract.drift(SCHEMAS)
    assert stale == [], f"regenerate with `itwin-worker schemas`: {stale}"


def test_drift_is_detected(tmp_path: Path) -> None:
    contract.write(tmp_path)
    path = tmp_path / "commands" / "workspace.create.json"
    document = json.loads(path.read_text())
    document["required"] = []
    path.write_text(contract.render(document))
    (tmp_path / "events" / "leftover.json").write_text("{}")
    assert contract.drift(tmp_path) == ["commands/workspace.create.json", "events/leftover.json"]


def test_every_command_and_both_its_events_have_a_schema() -> None:
    names = set(contract.schemas())
    for spec in COMMANDS:
        assert f"commands/{spec.routing_key}.json" in names
        assert f"events/{spec.success_event}.json" in names
        assert f"events/{spec.failure_event}.json" in names


def test_command_schema_states_the_page_rules() -> None:
    schema = contract.schemas()["commands/application.create.json"]
    assert schema["required"] == ["displayName", "version"]
    assert schema["properties"]["displayName"]["maxLength"] == 250
    assert schema["additionalProperties"] is False
