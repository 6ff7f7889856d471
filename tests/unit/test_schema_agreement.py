"""The JSON Schemas accept exactly what the worker accepts, checked from outside.

Every command's body corpus (hand-written cases plus mechanical mutations of a valid body) goes
through an independent JSON Schema 2020-12 validator (`jsonschema`) and through the worker's own
parsing; any body one accepts and the other refuses fails the test. The events the worker makes
must match the schema their `type` names, or for UnknownCommand the one schema of that kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from service import json_schemas
from service.api import ApiResponse
from service.commands import BY_ROUTING_KEY, COMMANDS, UNKNOWN_COMMAND_EVENT, failure_event_type
from service.errors import ApiError, InvalidCommand, UnknownCommand
from service.events import EncodedEvent, failure, success
from service.idempotency import MemoryOutcomes
from service.jobs import JobFollower, Poll
from tests.fakes import FakeApi, FakePublisher

ITWIN = "60805594-3e04-43b5-8fd8-5ccae0de23cc"
ID = "e47cf092-729a-4ce2-b20e-9b01ad820cdb"
SCHEMAS = json_schemas.schemas()

SETTINGS = {"quality": "Extra", "processingEngines": 5, "outputs": ["OBJ", "3MX"]}
RECONSTRUCTION = {
    "type": "Reconstruction",
    "name": "Reconstruction",
    "iTwinId": ITWIN,
    "specifications": {
        "inputs": {
            "scene": ID,
            "regionOfInterest": "bkt:roi.json",
            "extent": "bkt:extent.json",
            "modelingReference": ID,
            "presets": ["bkt:presets/a.json"],
            "crsData": "bkt:crs",
            "futureInput": {"kept": [1, 2.5, None, "x"]},
        },
        "outputs": {
            "modelingReference": True,
            "exports": [{"format": "3DTiles", "options": {"lodType": "Adaptive"}, "name": "tiles"}],
        },
        "options": {"tilingMode": "Adaptive", "tilingValue": 50, "geometricPrecision": "High",
                    "modelingReferenceType": "Complete", "crs": "EPSG:4326"},
    },
}  # fmt: skip


def creation(kind: str, specifications: Any, **envelope: Any) -> str:
    """A `modeling.job.create` body of this type, as JSON text."""
    return json.dumps({"type": kind, "iTwinId": ITWIN, "specifications": specifications,
                       **envelope})  # fmt: skip


def specs(inputs: Any, outputs: Any, **rest: Any) -> dict[str, Any]:
    return {"inputs": inputs, "outputs": outputs, **rest}


def listing(**criteria: Any) -> str:
    return json.dumps(criteria)


COST = {"gigaPixels": 2.5, "megaPoints": 1, "meshQuality": "Extra"}

# One valid body per command: the base of its mutations.
VALID: dict[str, dict[str, Any]] = {
    "workspace.create": {"name": "Workspace", "iTwinId": ITWIN},
    "workspace.get": {"workspaceId": ID},
    "job.create": {
        "type": "Full",
        "name": "job",
        "workspaceId": ID,
        "inputs": [{"id": ID, "description": "images"}],
        "settings": {**SETTINGS, "cacheSettings": {"createCache": True, "useCache": ID}},
        "costEstimationParameters": COST,
    },
    "repository.create": {
        "iTwinId": ITWIN,
        "class": "GeographicInformationSystem",
        "subClass": "WebMapTileService",
        "uri": "https://tiles.example.com/wmts",
    },
    "application.create": {"displayName": "Revit", "version": "2019"},
    "job.submit": {"jobId": ID},
    "job.cancel": {"jobId": ID},
    "job.get": {"jobId": ID},
    "job.follow": {"jobId": ID},
    "workspace.delete": {"workspaceId": ID},
    "job.update": {"jobId": ID, "settings": SETTINGS, "costEstimationParameters": COST},
    "job.delete": {"jobId": ID},
    "engines.get": {"iTwinId": ITWIN},
    "repository.list": {"iTwinId": ITWIN, "class": "Construction", "subClass": "Performance"},
    "repository.get": {"iTwinId": ITWIN, "repositoryId": ID},
    "repository.delete": {"iTwinId": ITWIN, "repositoryId": ID},
    "repository.update": {
        "iTwinId": ITWIN,
        "repositoryId": ID,
        "displayName": "Tiles",
        "uri": "https://tiles.example.com/v2",
        "authentication": {"type": "Header", "key": "X-Api-Key", "value": "k"},
        "options": None,
    },
    "application.list": {"continuationToken": "eyJzZXEiOjUwfQ"},
    "application.get": {"applicationId": ID},
    "application.update": {"applicationId": ID, "displayName": "Revit", "version": "2020"},
    "application.delete": {"applicationId": ID},
    "modeling.job.create": RECONSTRUCTION,
    "modeling.job.get": {"jobId": ID},
    "modeling.job.cancel": {"jobId": ID},
    "modeling.job.messages": {"jobId": ID},
    "modeling.job.follow": {"jobId": ID},
    "modeling.job.list": {
        "iTwinId": ITWIN,
        "state": "Active",
        "type": "Tiling",
        "name": "it's a job",
        "createdAfter": "2025-03-06T09:42:33Z",
        "createdBefore": "2026-01-01T00:00:00Z",
        "top": 2,
        "continuationToken": "MTRmZDkwOGY",
    },
}

# Bodies with a known answer, beyond the mutations: (routing key, JSON text, valid?).
KNOWN: list[tuple[str, str, bool]] = [
    # The three drifts the issue found.
    ("application.create", json.dumps({"displayName": "a\n||b", "version": "1"}), False),
    ("job.create", json.dumps({**VALID["job.create"], "settings": {"processingEngines": 5.0}}),
     True),
    ("job.create", json.dumps({**VALID["job.create"], "settings": {"processingEngines": 5.5}}),
     False),
    # Regex dialects: `$` before a final line break, a single pipe, lookaround-free patterns.
    ("workspace.get", json.dumps({"workspaceId": "abc\n"}), False),
    ("workspace.get", json.dumps({"workspaceId": "-abc"}), False),
    ("workspace.get", json.dumps({"workspaceId": "a" * 128}), True),
    ("workspace.get", json.dumps({"workspaceId": "a" * 129}), False),
    ("application.create", json.dumps({"displayName": "a|b\n", "version": "1"}), True),
    ("application.update", json.dumps({"applicationId": ID, "displayName": "x\n$",
                                       "version": "1"}), False),
    # Numbers JSON can write but a double cannot hold, and no numbers at all.
    ("job.create", '{"type": "Full", "name": "j", "workspaceId": "w", "inputs": [], '
     '"settings": {}, "costEstimationParameters": {"gigaPixels": 1e400}}', False),
    ("job.create", '{"type": "Full", "name": "j", "workspaceId": "w", "inputs": [], '
     '"settings": {}, "costEstimationParameters": {"gigaPixels": 1' + "0" * 400 + "}}", False),
    ("job.create", '{"type": "Full", "name": "j", "workspaceId": "w", "inputs": [], '
     '"settings": {}, "costEstimationParameters": {"gigaPixels": NaN}}', False),
    ("job.update", json.dumps({"jobId": ID, "settings": {"processingEngines": 1e300}}), True),
    # The lifecycle commands' own rules.
    ("job.update", json.dumps({"jobId": ID}), False),
    ("job.update", json.dumps({"jobId": ID, "settings": None}), False),
    ("job.update", json.dumps({"jobId": ID, "settings": None, "costEstimationParameters": {}}),
     True),
    ("job.update", json.dumps({"jobId": ID, "state": "active"}), False),
    ("repository.list", json.dumps({"iTwinId": ITWIN}), True),
    ("repository.list", json.dumps({"iTwinId": ITWIN, "subClass": "Performance"}), False),
    ("repository.list", json.dumps({"iTwinId": ITWIN, "subClass": None}), True),
    ("repository.list", json.dumps({"iTwinId": ITWIN, "class": None, "subClass": "MapServer"}),
     False),
    ("repository.list", json.dumps({"iTwinId": ITWIN, "class": "Models"}), False),
    ("repository.update", json.dumps({"iTwinId": ITWIN, "repositoryId": ID}), True),
    ("repository.update", json.dumps({"iTwinId": ITWIN, "repositoryId": ID, "uri": None}), False),
    ("repository.update", json.dumps({"iTwinId": ITWIN, "repositoryId": ID,
                                      "displayName": None}), False),
    ("repository.update", json.dumps({"iTwinId": ITWIN, "repositoryId": ID,
                                      "authentication": None}), True),
    ("repository.update", json.dumps({"iTwinId": ITWIN, "repositoryId": ID,
                                      "class": "Storage"}), False),
    ("application.list", "{}", True),
    ("application.list", json.dumps({"continuationToken": None}), True),
    ("application.list", json.dumps({"continuationToken": "t" * 2048}), True),
    ("application.list", json.dumps({"continuationToken": "t" * 2049}), False),
    ("application.list", json.dumps({"continuationToken": "a/b?c=d&e#f %"}), True),
    ("application.list", json.dumps({"continuationToken": "a\nb"}), False),
    ("application.list", json.dumps({"continuationToken": ""}), False),
    ("engines.get", "{}", True),
    ("engines.get", json.dumps({"iTwinId": "x&iTwinId=y"}), False),
    ("application.update", json.dumps({"applicationId": ID, "displayName": "a" * 251,
                                       "version": "1"}), False),
    ("application.update", json.dumps({"applicationId": ID, "displayName": "Revit"}), False),
    # Reality Modeling v2: the envelope, each type's named fields, everything else passed on.
    ("modeling.job.create", creation("Objects2D", specs({}, [])), False),
    ("modeling.job.create", creation("reconstruction", specs({"scene": ID}, {})), False),
    ("modeling.job.create", json.dumps({"iTwinId": ITWIN, "specifications": specs({}, [])}),
     False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID}, {}), name="ab"),
     False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID}, {}), name="abc"),
     True),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID}, {}), name=None),
     True),
    ("modeling.job.create", creation("Reconstruction", specs({}, {})), False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID, "crsData": "bkt:"},
                                                                {})), False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID, "crsData": "bkt:x"},
                                                                {})), True),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID, "crsData": "bkt:x\n"},
                                                                {})), False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID, "crsData": "bkts:x"},
                                                                {})), False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID, "extent": ID}, {})),
     False),
    ("modeling.job.create", creation("Reconstruction", specs(
        {"scene": ID}, {"exports": [{"format": "Cesium 3D Tiles"}]})), False),
    ("modeling.job.create", creation("Reconstruction", specs(
        {"scene": ID}, {"exports": [{"format": "LAS", "options": {"a": 1e400}}]})), False),
    ("modeling.job.create", creation("Reconstruction", specs(
        {"scene": ID}, {"exports": [{"options": {}}]})), False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID}, {}),
                                     extra=1), False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID, "x": [[1e400]]}, {})),
     False),
    ("modeling.job.create", '{"type": "Reconstruction", "iTwinId": "x", "specifications": '
     '{"inputs": {"scene": "s", "x": NaN}, "outputs": {}}}', False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID, "x": 10 ** 400}, {})),
     True),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID}, {}, options={
        "tilingValue": -1})), False),
    ("modeling.job.create", creation("Reconstruction", specs({"scene": ID}, {}, options={
        "tilingMode": "Irregular"})), False),
    ("modeling.job.create", creation("Calibration", specs({"scene": ID}, ["scene", "report",
                                                                          "texturedTiePoints"])),
     True),
    ("modeling.job.create", creation("Calibration", specs({"scene": ID}, ["scene", "mesh"])),
     False),
    ("modeling.job.create", creation("Calibration", specs({"scene": ID}, {"scene": True})),
     False),
    ("modeling.job.create", creation("Tiling", specs({"scene": ID, "regionOfInterest": "bkt:r"},
                                                     ["modelingReference"],
                                                     options={"tilingValue": 5.5})), True),
    ("modeling.job.create", creation("Tiling", specs({"scene": ID}, ["scene"])), False),
    ("modeling.job.create", creation("Production", specs(
        {"scene": ID, "modelingReference": ID}, {"exports": [{"format": "OrthophotoDSM"}]})),
     True),
    ("modeling.job.create", creation("Production", specs(
        {"scene": ID}, {"exports": [{"format": "OBJ"}]})), False),
    ("modeling.job.create", creation("Production", specs(
        {"scene": ID, "modelingReference": ID}, {})), False),
    ("modeling.job.create", creation("FillImageProperties", specs(
        {"imageCollections": [ID]}, ["scene"])), True),
    ("modeling.job.create", creation("FillImageProperties", specs(
        {"sceneToComplete": ID}, ["scene"])), True),
    ("modeling.job.create", creation("FillImageProperties", specs(
        {"presets": []}, ["scene"])), False),
    ("modeling.job.create", creation("FillImageProperties", specs(
        {"sceneToProcess": None}, ["scene"])), False),
    ("modeling.job.create", creation("FillImageProperties", specs(
        {"imageCollections": []}, ["scene"])), True),
    ("modeling.job.create", creation("ImportPointCloud", specs(
        {"scene": ID, "crsData": "bkt:c"}, ["scanCollection", "scene"])), True),
    ("modeling.job.create", creation("ImportPointCloud", specs({"scene": ID}, ["mesh"])), False),
    ("modeling.job.create", creation("GaussianSplats", specs({"anything": [1]}, ["splats"],
                                                             options={"x": "y"})), True),
    ("modeling.job.create", creation("Constraints", specs({}, {"constraints": ID})), True),
    ("modeling.job.create", creation("TouchUpImport", specs([], [])), False),
    ("modeling.job.create", creation("WaterConstraints", specs({}, "constraints")), False),
    ("modeling.job.create", creation("TouchUpExport", {"inputs": {}}), False),
    # The list's criteria: each checked before the worker writes the $filter.
    ("modeling.job.list", "{}", False),
    ("modeling.job.list", listing(top=5), False),
    ("modeling.job.list", listing(iTwinId=None, continuationToken=None), False),
    ("modeling.job.list", listing(continuationToken="t" * 2048), True),
    ("modeling.job.list", listing(iTwinId=ITWIN.upper()), True),
    ("modeling.job.list", listing(iTwinId=ITWIN + "\n"), False),
    ("modeling.job.list", listing(iTwinId="not-a-guid"), False),
    ("modeling.job.list", listing(iTwinId=ITWIN + " or state eq 'Active'"), False),
    ("modeling.job.list", listing(state="active"), False),
    ("modeling.job.list", listing(state="TerminatingOnCancel"), True),
    ("modeling.job.list", listing(type="Objects2D"), False),
    ("modeling.job.list", listing(createdAfter="2025-03-06T09:42:33+00:00"), False),
    ("modeling.job.list", listing(createdAfter="2025-13-06T09:42:33Z"), False),
    ("modeling.job.list", listing(createdAfter="2025-03-06T24:42:33Z"), False),
    ("modeling.job.list", listing(createdBefore="2025-03-06T09:42:33Z\n"), False),
    ("modeling.job.list", listing(createdBefore="\uff12025-03-06T09:42:33Z"), False),
    ("modeling.job.list", listing(createdBefore="2025-03-06T09:42:33.5Z"), False),
    ("modeling.job.list", listing(name="x' or '1' eq '1"), True),
    ("modeling.job.list", listing(name="n" * 256), True),
    ("modeling.job.list", listing(name="n" * 257), False),
    ("modeling.job.list", listing(name="a\tb"), False),
    ("modeling.job.list", listing(iTwinId=ITWIN, top=0), False),
    ("modeling.job.list", listing(iTwinId=ITWIN, top=1000), True),
    ("modeling.job.list", listing(iTwinId=ITWIN, top=1001), False),
    ("modeling.job.list", listing(iTwinId=ITWIN, top=2.0), True),
    ("modeling.job.list", listing(iTwinId=ITWIN, top="2"), False),
    ("modeling.job.cancel", json.dumps({"jobId": "../jobs"}), False),
]  # fmt: skip

# Values every field of every body is also tried with.
HOSTILE_VALUES: list[Any] = [
    None, "", " ", "x", "x\n", "\u00e9", "../x", "a b", "a\u0000b", "<", "||", "a" * 129,
    "t" * 2049, 0, 5, 5.0, 5.5, -1, True, [], {}, ["OBJ"], {"x": 1},
]  # fmt: skip


def _mutations(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The body with each field left out or replaced by each hostile value, and one unknown
    field added; nested objects are mutated the same way, one level down."""
    yield {**body, "unexpected": 1}
    for name, value in body.items():
        yield {k: v for k, v in body.items() if k != name}
        for hostile in HOSTILE_VALUES:
            yield {**body, name: hostile}
        if isinstance(value, dict):
            for inner in _mutations(value):
                yield {**body, name: inner}


def corpus() -> Iterator[tuple[str, str]]:
    for routing_key, body in VALID.items():
        yield routing_key, json.dumps(body)
        for mutated in _mutations(body):
            yield routing_key, json.dumps(mutated)
    for routing_key, text, _ in KNOWN:
        yield routing_key, text
    for spec in COMMANDS:
        yield spec.routing_key, "[]"
        yield spec.routing_key, "not json"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def schema_accepts(routing_key: str, text: str) -> bool:
    try:
        instance = json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return False
    validator = Draft202012Validator(SCHEMAS[f"commands/{routing_key}.json"])
    return bool(validator.is_valid(instance))


def worker_accepts(routing_key: str, text: str) -> bool:
    spec = BY_ROUTING_KEY[routing_key]
    try:
        request = spec.request(spec.parse(text.encode()))
    except InvalidCommand:
        return False
    # What the API client sends: an accepted body must be one JSON can carry.
    json.dumps(request.json, allow_nan=False)
    return True


def test_every_command_has_a_corpus() -> None:
    assert set(VALID) == {spec.routing_key for spec in COMMANDS}
    for routing_key, body in VALID.items():
        assert worker_accepts(routing_key, json.dumps(body)), routing_key


def test_every_command_schema_is_a_valid_2020_12_schema() -> None:
    for spec in COMMANDS:
        Draft202012Validator.check_schema(SCHEMAS[f"commands/{spec.routing_key}.json"])


def test_schemas_and_worker_agree_on_every_body_of_the_corpus() -> None:
    disagreements = []
    checked = 0
    for routing_key, text in corpus():
        checked += 1
        schema, worker = schema_accepts(routing_key, text), worker_accepts(routing_key, text)
        if schema != worker:
            disagreements.append(f"{routing_key} {text[:120]!r}: schema {schema}, worker {worker}")
    assert disagreements == [], "\n".join(disagreements)
    assert checked > 1000


@pytest.mark.parametrize(("routing_key", "text", "valid"), KNOWN)
def test_known_bodies_get_their_known_answer(routing_key: str, text: str, valid: bool) -> None:
    assert (schema_accepts(routing_key, text), worker_accepts(routing_key, text)) == (
        valid,
        valid,
    )


def _event_document(event: Any) -> Any:
    return json.loads(EncodedEvent.of(event).body)


def test_every_event_the_worker_makes_matches_its_schema() -> None:
    now = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    for spec in COMMANDS:
        error = InvalidCommand("bad", details=[{"code": "InvalidValue", "message": "m"}])
        failed = failure(
            spec.failure_event, command_id="c", correlation_id="c", error=error, now=now
        )
        schema = SCHEMAS[f"events/{spec.failure_event}.json"]
        assert Draft202012Validator(schema).is_valid(_event_document(failed)), spec.failure_event
        if spec.success_event is None:
            continue
        result: dict[str, Any] = {"id": "x"}
        if spec.result == "ids":
            result = {name: "x" for name in spec.path_fields}
        elif spec.result == "ids_and_object":
            result = {name: "x" for name in spec.path_fields} | {"errors": [], "warnings": []}
        elif spec.result in {"list", "page"}:
            result = {spec.result_key: [{"id": "x"}]}
        if spec.result == "page":
            result["continuationToken"] = None
        made = success(
            spec.success_event,
            command_id="c",
            correlation_id="c",
            result=result,
            attempts=1,
            now=now,
        )
        schema = SCHEMAS[f"events/{spec.success_event}.json"]
        assert Draft202012Validator(schema).is_valid(_event_document(made)), spec.success_event


@pytest.mark.parametrize("routing_key", ["bogus.thing", "bogus", "a b", "x" * 65, "a.b\n"])
def test_unknown_command_events_match_the_unknown_command_schema(routing_key: str) -> None:
    event_type = failure_event_type(None, routing_key)
    made = failure(
        event_type,
        command_id="c",
        correlation_id="c",
        error=UnknownCommand("No command is bound to this routing key."),
        now=datetime(2026, 11, 22, tzinfo=UTC),
    )
    schema = SCHEMAS[f"events/{UNKNOWN_COMMAND_EVENT}.json"]
    assert Draft202012Validator(schema).is_valid(_event_document(made)), event_type
    if event_type != UNKNOWN_COMMAND_EVENT:
        assert event_type == f"{routing_key}.failed"


def test_the_unknown_command_schema_refuses_a_type_no_unknown_command_gets() -> None:
    schema = SCHEMAS[f"events/{UNKNOWN_COMMAND_EVENT}.json"]
    made = _event_document(
        failure(
            "bogus.thing.failed",
            command_id="c",
            correlation_id="c",
            error=UnknownCommand("x"),
            now=datetime(2026, 11, 22, tzinfo=UTC),
        )
    )
    assert Draft202012Validator(schema).is_valid(made)
    for wrong in ("bogus.thing", "a b.failed", "bogus..failed"):
        assert not Draft202012Validator(schema).is_valid({**made, "type": wrong}), wrong


@pytest.mark.parametrize("messages", [{"errors": [{"code": "E"}], "warnings": []}, None])
async def test_the_events_of_a_followed_v2_job_match_their_schemas(
    messages: dict[str, Any] | None,
) -> None:
    answers: list[ApiResponse | Exception] = [
        ApiResponse(200, {"progress": {"percentage": 60, "state": "Failed"}}, 1),
        ApiResponse(200, {"job": {"id": "j1", "state": "Failed"}}, 1),
        ApiResponse(200, {"messages": messages}, 1)
        if messages is not None
        else ApiError("gone", status=404, code="JobNotFound"),
    ]
    publisher = FakePublisher()
    follower = JobFollower(FakeApi(*answers), publisher, MemoryOutcomes(ttl=60, lease=5), (1.0,))
    poll = Poll(job_id="j1", command_id="c", correlation_id="c", kind="modeling")
    await follower.poll(poll.model_dump_json().encode())
    progress, ended = publisher.published
    assert (progress["type"], ended["type"]) == ("modeling.job.progress", "modeling.job.failed")
    assert ended["messages"] == messages
    for event in (progress, ended):
        schema = SCHEMAS[f"events/{event['type']}.json"]
        assert Draft202012Validator(schema).is_valid(event), event["type"]
    assert not Draft202012Validator(SCHEMAS["events/modeling.job.failed.json"]).is_valid(
        {k: v for k, v in ended.items() if k != "messages"}
    ), "a failed v2 job's event always has its messages (or null)"
