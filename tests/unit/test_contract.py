"""The committed `schemas/` must be exactly what the models generate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service import asyncapi, contract, json_schemas
from service.commands import COMMANDS, UNKNOWN_COMMAND_EVENT
from service.jobs import JOB_EVENTS
from service.settings import Settings

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
    names = set(json_schemas.schemas())
    for spec in COMMANDS:
        assert f"commands/{spec.routing_key}.json" in names
        assert spec.success_event is None or f"events/{spec.success_event}.json" in names
        assert f"events/{spec.failure_event}.json" in names


def test_commands_and_events_describe_their_trace_headers() -> None:
    messages = asyncapi.document()["components"]["messages"]
    for spec in COMMANDS:
        command, failed = messages[spec.routing_key], messages[spec.failure_event]
        assert command["headers"]["$ref"].endswith("/command-trace-headers")
        assert failed["headers"]["$ref"].endswith("/event-trace-headers")
    headers = json_schemas.schemas()["headers/command-trace-headers.json"]["properties"]
    assert set(headers) == {"traceparent", "tracestate", "baggage"}
    assert "traceparent" in messages["deadLetter"]["headers"]["properties"]


def test_command_schema_states_the_page_rules() -> None:
    schema = json_schemas.schemas()["commands/application.create.json"]
    assert schema["required"] == ["displayName", "version"]
    assert schema["properties"]["displayName"]["maxLength"] == 250
    assert schema["additionalProperties"] is False


# The AsyncAPI document (schemas/asyncapi.json); .ci/asyncapi-check validates it with the parser.


def _follow(document: dict[str, Any], node: Any) -> Any:
    """`node` with every `$ref` chain followed (refs are local JSON pointers)."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_committed_asyncapi_document_matches_the_models() -> None:
    assert (SCHEMAS / contract.ASYNCAPI).is_file()
    assert contract.ASYNCAPI not in contract.drift(SCHEMAS)


def test_asyncapi_drift_is_detected(tmp_path: Path) -> None:
    contract.write(tmp_path)
    path = tmp_path / contract.ASYNCAPI
    document = json.loads(path.read_text())
    del document["operations"]["receive.workspace.create"]
    path.write_text(contract.render(document))
    assert contract.drift(tmp_path) == [contract.ASYNCAPI]
    path.unlink()
    assert contract.drift(tmp_path) == [contract.ASYNCAPI]


def test_asyncapi_document_is_deterministic() -> None:
    assert contract.render(asyncapi.document()) == contract.render(asyncapi.document())
    assert asyncapi.document()["asyncapi"] == "3.0.0"


def test_every_command_and_event_is_a_message_and_an_operation() -> None:
    document = asyncapi.document()
    messages = document["components"]["messages"]

    def operated(action: str, name: str) -> bool:
        return any(
            operation["action"] == action
            and any(_follow(document, ref) is messages[name] for ref in operation["messages"])
            for operation in document["operations"].values()
        )

    events = [UNKNOWN_COMMAND_EVENT]
    for spec in COMMANDS:
        assert messages[spec.routing_key]["name"] == spec.routing_key
        assert operated("receive", spec.routing_key), spec.routing_key
        channel = document["channels"][f"commands.{spec.routing_key}"]
        assert channel["address"] == spec.routing_key
        assert channel["bindings"]["amqp"]["exchange"]["name"] == "itwin.commands"
        assert channel["bindings"]["amqp"]["x-queue"]["name"] == f"itwin-worker.{spec.routing_key}"
        assert channel["bindings"]["amqp"]["x-queue"]["arguments"]["x-queue-type"] == "quorum"
        events += [event for event in (spec.success_event, spec.failure_event) if event]
    events += list(JOB_EVENTS)
    for event in events:
        assert messages[event]["bindings"]["amqp"]["messageType"] == event
        assert operated("send", event), event
        assert document["channels"][f"events.{event}"]["address"] == event
    assert operated("send", asyncapi.DEAD_LETTER)
    assert operated("receive", asyncapi.UNKNOWN_COMMAND)
    assert operated("send", asyncapi.UNKNOWN_COMMAND_FAILED)
    assert document["channels"]["deadLetters"]["address"] == "itwin-worker.dlq"


def _hoisted(schema: Any) -> Any:
    """`schema` with its `#/$defs/...` references pointing into `components.schemas`."""
    return json.loads(json.dumps(schema).replace('"#/$defs/', '"#/components/schemas/'))


def test_asyncapi_payloads_are_the_contract_schemas() -> None:
    document = asyncapi.document()
    components = document["components"]
    for relative, schema in json_schemas.schemas().items():
        kind, name = relative.split("/", 1)
        name = name.removesuffix(".json")
        expected = {k: v for k, v in schema.items() if k not in {"$schema", "$defs"}}
        if kind == "headers":
            assert components["schemas"][name] == expected
            continue
        assert _follow(document, components["messages"][name]["payload"]) == _hoisted(expected)
        for def_name, definition in schema.get("$defs", {}).items():
            assert components["schemas"][def_name] == _hoisted(definition)
    assert "#/$defs/" not in json.dumps(document)


def test_every_asyncapi_reference_resolves() -> None:
    document = asyncapi.document()
    refs = set(_refs(document))
    assert refs
    for ref in refs:
        assert _follow(document, {"$ref": ref}) is not None, ref


def test_asyncapi_document_follows_the_settings_without_credentials() -> None:
    settings = Settings(
        amqp_url="amqps://user:s3cret@rabbit.internal:5671/prod",
        command_exchange="cmds",
        queue_prefix="w.",
    )
    document = asyncapi.document(settings)
    assert "s3cret" not in json.dumps(document)
    assert document["servers"]["broker"]["host"] == "rabbit.internal:5671"
    assert document["servers"]["broker"]["protocol"] == "amqps"
    binding = document["channels"]["commands.workspace.create"]["bindings"]["amqp"]
    assert binding["exchange"] == {
        "name": "cmds",
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "vhost": "prod",
    }
    assert binding["x-queue"]["name"] == "w.workspace.create"
