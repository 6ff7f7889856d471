"""`docs/configuration.md`, generated from `Settings`: every variable, its default, its meaning.

The table is the settings' own field docstrings, so it cannot say anything `Settings` does not
do; a unit test fails when the committed file drifts from what this module renders
(`itwin-worker settings-doc` writes it again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from service.settings import Settings

DEFAULT_PATH = Path("docs/configuration.md")
_HEADER = """# Configuration

Generated from `service/settings.py` by `itwin-worker settings-doc`; do not edit by hand (a
unit test compares the two).

Every setting is an environment variable with the prefix `ITWIN_WORKER_`; invalid values stop
the worker at start with one line per bad variable, e.g.
`ITWIN_WORKER_RATE_LIMIT_BURST: Input should be greater than 0`. Lists are comma-separated.

Besides these, the worker reads the standard variables every well-behaved client reads:
`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY` (any case) for the API and the token
endpoint ([network](network.md)), `SSL_CERT_FILE` / `SSL_CERT_DIR`, and the OpenTelemetry SDK's
`OTEL_*`.

| variable | default | meaning |
|---|---|---|
"""


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _default(value: Any) -> str:
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, list | tuple):
        return f"`{','.join(_text(item) for item in value)}`" if value else "empty"
    return f"`{_text(value)}`"


def render() -> str:
    rows = []
    prefix = Settings.model_config.get("env_prefix", "")
    for name, field in Settings.model_fields.items():
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        # A standard variable (`OTEL_*`) is read by its own name, without the prefix.
        variable = field.validation_alias if isinstance(field.validation_alias, str) else None
        variable = variable or f"{prefix}{name.upper()}"
        rows.append(f"| `{variable}` | {_default(field.default)} | {meaning} |")
    return _HEADER + "\n".join(rows) + "\n"


def write(path: Path = DEFAULT_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
