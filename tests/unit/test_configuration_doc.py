"""docs/configuration.md is what `Settings` says, and names every setting."""

from __future__ import annotations

from pathlib import Path

from service import configuration_doc
from service.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_table_is_the_generated_one() -> None:
    assert DOC.read_text() == configuration_doc.render(), (
        "docs/configuration.md is stale: run `itwin-worker settings-doc`"
    )


def test_every_setting_has_a_row_with_a_meaning() -> None:
    rendered = configuration_doc.render()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variable = alias if isinstance(alias, str) else f"ITWIN_WORKER_{name.upper()}"
        assert f"`{variable}`" in rendered
        assert field.description, f"{name} has no docstring"


def test_secrets_show_no_default_value() -> None:
    row = next(
        line
        for line in configuration_doc.render().splitlines()
        if "`ITWIN_WORKER_CLIENT_SECRET`" in line
    )
    assert "| unset |" in row
