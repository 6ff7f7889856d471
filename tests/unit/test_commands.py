"""Validation of command bodies against the API pages' rules, and request building."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.commands import BY_ROUTING_KEY, COMMANDS, UnexpectedAnswer
from service.errors import InvalidCommand

VALID: dict[str, dict[str, Any]] = {
    "workspace.create": {
        "name": "Workspace test",
        "iTwinId": "60805594-3e04-43b5-8fd8-5ccae0de23cc",
    },
    "workspace.get": {"workspaceId": "e47cf092-729a-4ce2-b20e-9b01ad820cdb"},
    "job.create": {
        "type": "Full",
        "name": "My first Reality Modeling job",
        "costEstimationParameters": {"gigaPixels": 2.5, "megaPoints": 1, "meshQuality": "Extra"},
        "inputs": [
            {"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4", "description": "Drone ImageCollection"}
        ],
        "workspaceId": "6881117d-9fd2-4900-870b-9b721dc90f25",
        "settings": {
            "quality": "Extra",
            "processingEngines": 5,
            "outputs": ["OBJ", "3MX", "Orthophoto/DSM", "WebReady ScalableMesh"],
            "cacheSettings": {"createCache": True, "useCache": "799b11bd"},
        },
    },
    "repository.create": {
        "iTwinId": "60805594-3e04-43b5-8fd8-5ccae0de23cc",
        "class": "GeographicInformationSystem",
        "subClass": "WebMapTileService",
        "uri": "https://developer.bentley.com",
    },
    "application.create": {"displayName": "Revit", "version": "2019"},
}


def _parse(routing_key: str, document: Any) -> Any:
    return BY_ROUTING_KEY[routing_key].parse(json.dumps(document).encode())


def _details(routing_key: str, body: bytes) -> list[dict[str, Any]]:
    with pytest.raises(InvalidCommand) as caught:
        BY_ROUTING_KEY[routing_key].parse(body)
    assert caught.value.status is None
    assert caught.value.dead_letter
    return caught.value.details


def test_catalogue_has_the_contracts_commands_and_event_names() -> None:
    assert {spec.routing_key: (spec.success_event, spec.failure_event) for spec in COMMANDS} == {
        "workspace.create": ("workspace.created", "workspace.create.failed"),
        "workspace.get": ("workspace.retrieved", "workspace.get.failed"),
        "job.create": ("job.created", "job.create.failed"),
        "repository.create": ("repository.created", "repository.create.failed"),
        "application.create": ("application.created", "application.create.failed"),
        "job.submit": ("job.submitted", "job.submit.failed"),
        "job.cancel": ("job.cancel.accepted", "job.cancel.failed"),
        "job.get": ("job.retrieved", "job.get.failed"),
        "job.follow": (None, "job.follow.failed"),
        "workspace.delete": ("workspace.deleted", "workspace.delete.failed"),
        "job.update": ("job.updated", "job.update.failed"),
        "job.delete": ("job.deleted", "job.delete.failed"),
        "engines.get": ("engines.retrieved", "engines.get.failed"),
        "repository.list": ("repository.listed", "repository.list.failed"),
        "repository.get": ("repository.retrieved", "repository.get.failed"),
        "repository.update": ("repository.updated", "repository.update.failed"),
        "repository.delete": ("repository.deleted", "repository.delete.failed"),
        "application.list": ("application.listed", "application.list.failed"),
        "application.get": ("application.retrieved", "application.get.failed"),
        "application.update": ("application.updated", "application.update.failed"),
        "application.delete": ("application.deleted", "application.delete.failed"),
        "modeling.job.create": ("modeling.job.created", "modeling.job.create.failed"),
        "modeling.job.get": ("modeling.job.retrieved", "modeling.job.get.failed"),
        "modeling.job.cancel": ("modeling.job.cancel.accepted", "modeling.job.cancel.failed"),
        "modeling.job.messages": (
            "modeling.job.messages.retrieved",
            "modeling.job.messages.failed",
        ),
        "modeling.job.list": ("modeling.job.listed", "modeling.job.list.failed"),
        "modeling.job.follow": (None, "modeling.job.follow.failed"),
    }


@pytest.mark.parametrize("routing_key", sorted(VALID))
def test_valid_bodies_become_the_pages_requests(routing_key: str) -> None:
    spec = BY_ROUTING_KEY[routing_key]
    request = spec.request(_parse(routing_key, VALID[routing_key]))
    expected_body = {k: v for k, v in VALID[routing_key].items() if k not in spec.path_fields}
    assert request.method == spec.method
    assert request.json == (expected_body if spec.method == "POST" else None)


def test_paths_carry_the_ids() -> None:
    get = BY_ROUTING_KEY["workspace.get"].request(_parse("workspace.get", VALID["workspace.get"]))
    assert get.path == "/contextcapture/workspaces/e47cf092-729a-4ce2-b20e-9b01ad820cdb"
    assert get.endpoint == "/contextcapture/workspaces/{workspaceId}"
    repo = BY_ROUTING_KEY["repository.create"].request(
        _parse("repository.create", VALID["repository.create"])
    )
    assert repo.path == "/itwins/60805594-3e04-43b5-8fd8-5ccae0de23cc/repositories"
    assert repo.json is not None
    assert "iTwinId" not in repo.json


@pytest.mark.parametrize(
    ("routing_key", "method", "body"),
    [
        ("job.submit", "PATCH", {"state": "active"}),
        ("job.cancel", "PATCH", {"state": "cancelled"}),
        ("job.get", "GET", None),
    ],
)
def test_job_lifecycle_commands_become_the_references_calls(
    routing_key: str, method: str, body: dict[str, str] | None
) -> None:
    request = BY_ROUTING_KEY[routing_key].request(_parse(routing_key, {"jobId": "cc3d35cc-41"}))
    assert (request.method, request.path, request.json) == (
        method, "/contextcapture/jobs/cc3d35cc-41", body,
    )  # fmt: skip
    follow = BY_ROUTING_KEY["job.follow"].request(_parse("job.follow", {"jobId": "j1"}))
    assert (follow.method, follow.path) == ("GET", "/contextcapture/jobs/j1/progress")


def test_job_body_is_forwarded_unchanged() -> None:
    request = BY_ROUTING_KEY["job.create"].request(_parse("job.create", VALID["job.create"]))
    assert request.json == VALID["job.create"]


def test_not_json_is_invalid_with_a_json_detail() -> None:
    details = _details("workspace.create", b"{not json")
    assert details[0]["code"] == "InvalidJson"
    assert details[0]["target"] is None


def test_json_that_is_not_an_object_is_invalid() -> None:
    assert _details("workspace.create", b"[1, 2]")[0]["code"] == "InvalidValue"


@pytest.mark.parametrize(
    ("routing_key", "field"),
    [
        ("workspace.create", "name"),
        ("workspace.get", "workspaceId"),
        ("job.create", "type"),
        ("job.create", "workspaceId"),
        ("job.create", "inputs"),
        ("job.create", "settings"),
        ("repository.create", "iTwinId"),
        ("repository.create", "class"),
        ("repository.create", "uri"),
        ("application.create", "displayName"),
        ("application.create", "version"),
    ],
)
def test_missing_required_field_is_named(routing_key: str, field: str) -> None:
    body = {k: v for k, v in VALID[routing_key].items() if k != field}
    details = _details(routing_key, json.dumps(body).encode())
    assert details == [
        {"code": "MissingRequiredProperty", "message": "Field required", "target": field}
    ]


@pytest.mark.parametrize(
    ("routing_key", "change", "target"),
    [
        ("job.create", {"type": "Partial"}, "type"),
        ("job.create", {"settings": {"quality": "Ultra"}}, "settings.quality"),
        ("job.create", {"settings": {"outputs": ["OBJ", "STL"]}}, "settings.outputs.1"),
        ("job.create", {"settings": {"processingEngines": -1}}, "settings.processingEngines"),
        ("job.create", {"settings": {"processingEngines": "5"}}, "settings.processingEngines"),
        (
            "job.create",
            {"costEstimationParameters": {"meshQuality": "High"}},
            "costEstimationParameters.meshQuality",
        ),
        ("repository.create", {"class": "Models"}, "class"),
        ("repository.create", {"subClass": "Tiles"}, "subClass"),
        ("repository.create", {"uri": ""}, "uri"),
        ("workspace.create", {"name": ""}, "name"),
        ("workspace.create", {"name": 7}, "name"),
        ("application.create", {"displayName": "a" * 251}, "displayName"),
        ("application.create", {"version": "v" * 251}, "version"),
    ],
)
def test_broken_rule_is_named(routing_key: str, change: dict[str, Any], target: str) -> None:
    details = _details(routing_key, json.dumps({**VALID[routing_key], **change}).encode())
    assert [d["target"] for d in details] == [target]
    assert details[0]["code"] == "InvalidValue"


def test_all_seventeen_output_formats_are_accepted() -> None:
    formats = [
        "CCOrientations", "3MX", "3SM", "WebReady ScalableMesh", "Cesium 3D Tiles", "POD",
        "Orthophoto/DSM", "LAS", "FBX", "OBJ", "ESRI i3s", "DGN", "LODTreeExport", "PLY", "OPC",
        "OMR", "ContextScene",
    ]  # fmt: skip
    body = {**VALID["job.create"], "settings": {"outputs": formats}}
    assert _parse("job.create", body).settings.outputs == formats


@pytest.mark.parametrize("forbidden", [">", "<", "^", "$", "?", "||"])
@pytest.mark.parametrize("field", ["displayName", "version"])
def test_application_text_rejects_each_forbidden_character(forbidden: str, field: str) -> None:
    body = {**VALID["application.create"], field: f"Rev{forbidden}it"}
    details = _details("application.create", json.dumps(body).encode())
    assert [d["target"] for d in details] == [field]
    assert "special characters" in details[0]["message"]


def test_application_text_allows_a_single_pipe_and_250_characters() -> None:
    body = {"displayName": "a|b" + "c" * 247, "version": "x" * 250}
    assert _parse("application.create", body).display_name == body["displayName"]


def test_unknown_fields_are_rejected_not_dropped() -> None:
    details = _details("workspace.create", json.dumps({"name": "w", "itwinId": "x"}).encode())
    assert details == [
        {
            "code": "UnknownProperty",
            "message": "Extra inputs are not permitted",
            "target": "itwinId",
        }
    ]


@pytest.mark.parametrize(
    "hostile",
    ["../jobs", "a/b", "x?y=1", "%2e%2e", "", "a b", "id#frag", "\u00e9t\u00e9", "a" * 129],
)
def test_ids_that_go_into_paths_cannot_change_the_path(hostile: str) -> None:
    details = _details("workspace.get", json.dumps({"workspaceId": hostile}).encode())
    assert details[0]["target"] == "workspaceId"
    details = _details(
        "repository.create", json.dumps({**VALID["repository.create"], "iTwinId": hostile}).encode()
    )
    assert details[0]["target"] == "iTwinId"


def test_every_broken_field_is_reported_at_once() -> None:
    details = _details("application.create", json.dumps({"displayName": "<>"}).encode())
    assert sorted(d["target"] for d in details) == ["displayName", "version"]


def test_optional_fields_sent_as_null_are_left_out_of_the_request() -> None:
    spec = BY_ROUTING_KEY["workspace.create"]
    request = spec.request(_parse("workspace.create", {"name": "w", "iTwinId": None}))
    assert request.json == {"name": "w"}


# --- the rest of each resource's lifecycle --------------------------------------------------

ITWIN = "60805594-3e04-43b5-8fd8-5ccae0de23cc"


def _request(routing_key: str, document: dict[str, Any]) -> Any:
    return BY_ROUTING_KEY[routing_key].request(_parse(routing_key, document))


@pytest.mark.parametrize(
    ("routing_key", "document", "method", "path", "query", "body"),
    [
        ("workspace.delete", {"workspaceId": "w1"}, "DELETE", "/contextcapture/workspaces/w1",
         (), None),
        ("job.delete", {"jobId": "j1"}, "DELETE", "/contextcapture/jobs/j1", (), None),
        ("job.update", {"jobId": "j1", "settings": {"quality": "Draft", "processingEngines": 3.0}},
         "PATCH", "/contextcapture/jobs/j1", (),
         {"settings": {"quality": "Draft", "processingEngines": 3}}),
        ("engines.get", {}, "GET", "/contextcapture/limits/engines", (), None),
        ("engines.get", {"iTwinId": ITWIN}, "GET", "/contextcapture/limits/engines",
         (("iTwinId", ITWIN),), None),
        ("repository.list", {"iTwinId": ITWIN, "class": "Construction", "subClass": None},
         "GET", f"/itwins/{ITWIN}/repositories", (("class", "Construction"),), None),
        ("repository.get", {"iTwinId": ITWIN, "repositoryId": "r1"}, "GET",
         f"/itwins/{ITWIN}/repositories/r1", (), None),
        ("repository.update", {"iTwinId": ITWIN, "repositoryId": "r1", "displayName": "d",
                               "options": None}, "PATCH", f"/itwins/{ITWIN}/repositories/r1",
         (), {"displayName": "d", "options": None}),
        ("repository.delete", {"iTwinId": ITWIN, "repositoryId": "r1"}, "DELETE",
         f"/itwins/{ITWIN}/repositories/r1", (), None),
        ("application.list", {}, "GET", "/library/applications", (), None),
        ("application.list", {"continuationToken": "a&b=c/d"}, "GET", "/library/applications",
         (("continuationToken", "a&b=c/d"),), None),
        ("application.get", {"applicationId": "a1"}, "GET", "/library/applications/a1", (), None),
        ("application.update", {"applicationId": "a1", "displayName": "R", "version": "1"}, "PUT",
         "/library/applications/a1", (), {"displayName": "R", "version": "1"}),
        ("application.delete", {"applicationId": "a1"}, "DELETE", "/library/applications/a1",
         (), None),
    ],
)  # fmt: skip
def test_lifecycle_commands_become_the_pages_requests(
    routing_key: str,
    document: dict[str, Any],
    method: str,
    path: str,
    query: tuple[tuple[str, str], ...],
    body: dict[str, Any] | None,
) -> None:
    request = _request(routing_key, document)
    assert (request.method, request.path, request.query, request.json) == (
        method, path, query, body,
    )  # fmt: skip
    assert request.endpoint == BY_ROUTING_KEY[routing_key].path


def test_a_null_is_sent_only_where_the_api_acts_on_it() -> None:
    request = _request(
        "repository.update",
        {"iTwinId": ITWIN, "repositoryId": "r1", "authentication": None, "options": {"a": None}},
    )
    assert request.json == {"authentication": None, "options": {"a": None}}
    job = _request("job.update", {"jobId": "j1", "settings": None, "costEstimationParameters": {}})
    assert job.json == {"costEstimationParameters": {}}


@pytest.mark.parametrize(
    ("routing_key", "safe"),
    [
        ("workspace.create", False),
        ("job.submit", False),
        ("job.cancel", False),
        ("job.update", True),
        ("repository.update", True),
        ("application.update", True),
        ("workspace.delete", True),
        ("application.list", True),
    ],
)
def test_which_requests_are_repeated_after_a_lost_answer(routing_key: str, safe: bool) -> None:
    spec = BY_ROUTING_KEY[routing_key]
    document = (
        VALID.get(routing_key)
        or {
            "workspace.delete": {"workspaceId": "w"},
            "job.submit": {"jobId": "j"},
            "job.cancel": {"jobId": "j"},
            "job.update": {"jobId": "j", "settings": {}},
            "repository.update": {"iTwinId": ITWIN, "repositoryId": "r"},
            "application.update": {"applicationId": "a", "displayName": "R", "version": "1"},
            "application.list": {},
        }[routing_key]
    )
    assert spec.request(_parse(routing_key, document)).safe_to_repeat is safe


def test_deletes_answer_with_the_ids_they_named() -> None:
    spec = BY_ROUTING_KEY["repository.delete"]
    command = _parse("repository.delete", {"iTwinId": ITWIN, "repositoryId": "r1"})
    assert spec.result_of(command, {}) == {"iTwinId": ITWIN, "repositoryId": "r1"}


def test_a_list_answers_with_its_items() -> None:
    spec = BY_ROUTING_KEY["repository.list"]
    command = _parse("repository.list", {"iTwinId": ITWIN})
    items = [{"id": "r1", "class": "Construction"}]
    assert spec.result_of(command, {"repositories": items}) == {"repositories": items}
    with pytest.raises(UnexpectedAnswer):
        spec.result_of(command, {"repositories": {"id": "r1"}})
    with pytest.raises(UnexpectedAnswer):
        spec.result_of(command, {"repositories": ["r1"]})


@pytest.mark.parametrize(
    ("links", "token"),
    [
        ({}, None),
        ({"next": None}, None),
        ({"next": {"href": "https://api.example/library/applications?continuationToken=a%26b"}},
         "a&b"),
        ({"next": {"href": "/library/applications?$top=50&continuationToken=xyz"}}, "xyz"),
    ],
)  # fmt: skip
def test_a_page_carries_the_next_pages_token(links: dict[str, Any], token: str | None) -> None:
    spec = BY_ROUTING_KEY["application.list"]
    command = _parse("application.list", {})
    document = {"applications": [{"id": "a"}], "_links": links}
    assert spec.result_of(command, document) == {
        "applications": [{"id": "a"}],
        "continuationToken": token,
    }
    assert spec.result_of(command, {"applications": []}) == {
        "applications": [],
        "continuationToken": None,
    }


@pytest.mark.parametrize(
    "links",
    [{"next": {}}, {"next": {"href": 5}}, {"next": {"href": "https://api.example/x?skip=50"}}],
)
def test_a_next_link_without_a_token_is_an_unexpected_answer(links: dict[str, Any]) -> None:
    spec = BY_ROUTING_KEY["application.list"]
    with pytest.raises(UnexpectedAnswer):
        spec.result_of(_parse("application.list", {}), {"applications": [], "_links": links})
