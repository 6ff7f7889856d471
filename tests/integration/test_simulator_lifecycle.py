"""The simulator's lifecycle endpoints (api-beyond.md) over real HTTP: delete, update, get, list,
and the drop fault."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.simulator import (
    ACCEPT_MEDIA_TYPE,
    FORBIDDEN_ITWIN_ID,
    SimulatorConfig,
    SimulatorHandle,
    add_arguments,
    config_from_args,
    running_simulator,
)

ITWIN = "60805594-3e04-43b5-8fd8-5ccae0de23cc"
UNKNOWN = "00000000-0000-4000-8000-000000000000"
WORKSPACE_NOT_FOUND = {
    "error": {"code": "WorkspaceNotFound", "message": "Requested workspace is not available."}
}
JOB_NOT_FOUND = {"error": {"code": "JobNotFound", "message": "Requested job is not available."}}
ITWIN_NOT_FOUND = {
    "error": {"code": "iTwinNotFound", "message": "Requested iTwin is not available."}
}
REPOSITORY_NOT_FOUND = {
    "error": {
        "code": "iTwinRepositoryNotFound",
        "message": "Requested iTwin Repository is not available.",
    }
}
APPLICATION_NOT_FOUND = {
    "error": {"code": "ApplicationNotFound", "message": "Requested Application is not available."}
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with running_simulator(SimulatorConfig()) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _fresh_simulator(sim: SimulatorHandle) -> None:
    sim.reset()


@pytest.fixture
def http(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=5.0) as client:
        yield client


@pytest.fixture
def headers(http: httpx.Client, sim: SimulatorHandle) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "scope": "itwin-platform",
    }
    token = http.post(sim.token_url, data=form).json()["access_token"]
    return {"Authorization": f"Bearer {token}", "Accept": ACCEPT_MEDIA_TYPE}


def created(response: httpx.Response, key: str) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()[key]
    return document


@pytest.fixture
def workspace(http: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    response = http.post("/contextcapture/workspaces", json={"name": "w"}, headers=headers)
    return created(response, "workspace")


@pytest.fixture
def job(http: httpx.Client, headers: dict[str, str], workspace: dict[str, Any]) -> dict[str, Any]:
    body = {
        "type": "Full",
        "name": "job",
        "workspaceId": workspace["id"],
        "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"}],
        "settings": {"quality": "Draft", "processingEngines": 2, "outputs": ["OBJ"]},
    }
    return created(http.post("/contextcapture/jobs", json=body, headers=headers), "job")


def add_repository(
    http: httpx.Client,
    headers: dict[str, str],
    class_: str = "GeographicInformationSystem",
    sub_class: str = "WebMapService",
    uri: str | None = None,
) -> dict[str, Any]:
    body = {"class": class_, "subClass": sub_class, "uri": uri or f"https://x/{uuid.uuid4()}"}
    response = http.post(f"/itwins/{ITWIN}/repositories", json=body, headers=headers)
    return created(response, "repository")


def add_application(http: httpx.Client, headers: dict[str, str], name: str) -> dict[str, Any]:
    body = {"displayName": name, "version": "1"}
    return created(http.post("/library/applications", json=body, headers=headers), "application")


# --- workspaces ---------------------------------------------------------------------------------


def test_delete_workspace(
    http: httpx.Client, headers: dict[str, str], workspace: dict[str, Any]
) -> None:
    path = f"/contextcapture/workspaces/{workspace['id']}"
    response = http.delete(path, headers=headers)
    assert (response.status_code, response.content) == (204, b"")
    assert http.get(path, headers=headers).json() == WORKSPACE_NOT_FOUND
    again = http.delete(path, headers=headers)
    assert (again.status_code, again.json()) == (404, WORKSPACE_NOT_FOUND)


# --- jobs -------------------------------------------------------------------------------------


def test_patch_job_settings_and_cost(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any]
) -> None:
    body = {
        "settings": {"quality": "Extra", "outputs": ["3MX", "LAS"]},
        "costEstimationParameters": {"gigaPixels": 2.0, "megaPoints": 10, "meshQuality": "Extra"},
    }
    response = http.patch(f"/contextcapture/jobs/{job['id']}", json=body, headers=headers)

    assert response.status_code == 200, response.text
    changed = response.json()["job"]
    settings = changed["jobSettings"]
    assert (settings["quality"], settings["processingEngines"]) == ("Extra", 2)
    assert [output["format"] for output in settings["outputs"]] == ["3MX", "LAS"]
    assert all(output["id"] for output in settings["outputs"])
    assert changed["costEstimationParameters"] == body["costEstimationParameters"]
    assert changed["estimatedCost"] == 1.5 * (2.0 + 0.1 * 10)
    assert changed["state"] == "unsubmitted"
    assert http.get(f"/contextcapture/jobs/{job['id']}", headers=headers).json()["job"] == changed


@pytest.mark.parametrize(
    ("body", "targets"),
    [
        ({"settings": {"quality": "Ultra"}}, ["settings.quality"]),
        ({"settings": {"processingEngines": 21}}, ["settings.processingEngines"]),
        ({"costEstimationParameters": {"gigaPixels": -1}}, ["costEstimationParameters.gigaPixels"]),
        ({"state": "active", "settings": {"quality": "Draft"}}, ["settings"]),
    ],
)
def test_patch_job_with_bad_changes(
    http: httpx.Client,
    headers: dict[str, str],
    job: dict[str, Any],
    body: dict[str, Any],
    targets: list[str],
) -> None:
    response = http.patch(f"/contextcapture/jobs/{job['id']}", json=body, headers=headers)

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["message"]) == (
        "InvalidContextCaptureRequest",
        "Cannot update job.",
    )
    assert [detail["target"] for detail in error["details"]] == targets
    assert http.get(f"/contextcapture/jobs/{job['id']}", headers=headers).json()["job"] == job


def test_patch_settings_of_a_submitted_job_is_refused(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any]
) -> None:
    path = f"/contextcapture/jobs/{job['id']}"
    assert http.patch(path, json={"state": "active"}, headers=headers).status_code == 200
    response = http.patch(path, json={"settings": {"quality": "Extra"}}, headers=headers)

    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"code": "InvalidChange", "message": "Cannot change an already submitted job."}
    ]
    unknown = http.patch(f"/contextcapture/jobs/{UNKNOWN}", json={"settings": {}}, headers=headers)
    assert (unknown.status_code, unknown.json()) == (404, JOB_NOT_FOUND)


def test_delete_unsubmitted_job(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any]
) -> None:
    path = f"/contextcapture/jobs/{job['id']}"
    response = http.delete(path, headers=headers)
    assert (response.status_code, response.content) == (204, b"")
    assert http.get(path, headers=headers).json() == JOB_NOT_FOUND
    assert http.delete(path, headers=headers).json() == JOB_NOT_FOUND


@pytest.mark.parametrize("transition", ["active", "cancelled"])
def test_delete_submitted_or_cancelled_job_is_the_pages_422(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any], transition: str
) -> None:
    path = f"/contextcapture/jobs/{job['id']}"
    assert http.patch(path, json={"state": transition}, headers=headers).status_code == 200
    response = http.delete(path, headers=headers)

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "InvalidContextCaptureRequest",
            "message": "Cannot delete job.",
            "details": [
                {"code": "InvalidChange", "message": "Cannot delete an already submitted job."}
            ],
        }
    }
    assert http.get(path, headers=headers).status_code == 200


def test_engine_limit(http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle) -> None:
    path = "/contextcapture/limits/engines"
    assert http.get(path, headers=headers).json() == {"enginesLimit": {"maxEngines": 20}}
    sim.configure(engine_limit=7)
    for itwin in (ITWIN, FORBIDDEN_ITWIN_ID):
        answer = http.get(path, params={"iTwinId": itwin}, headers=headers)
        assert answer.json() == {"enginesLimit": {"maxEngines": 7}}
    unknown = http.get(path, params={"iTwinId": UNKNOWN}, headers=headers)
    assert (unknown.status_code, unknown.json()) == (404, ITWIN_NOT_FOUND)


# --- repositories -----------------------------------------------------------------------------


def test_list_repositories_all_and_by_class(http: httpx.Client, headers: dict[str, str]) -> None:
    path = f"/itwins/{ITWIN}/repositories"
    assert http.get(path, headers=headers).json() == {"repositories": []}
    wms = add_repository(http, headers)
    wmts = add_repository(http, headers, sub_class="WebMapTileService")
    performance = add_repository(http, headers, "Construction", "Performance")

    def listed(**params: str) -> list[dict[str, Any]]:
        response = http.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        return list(response.json()["repositories"])

    assert listed() == [wms, wmts, performance]
    assert listed(**{"class": "GeographicInformationSystem"}) == [wms, wmts]
    assert listed(**{"class": "GeographicInformationSystem", "subClass": "WebMapTileService"}) == [
        wmts
    ]
    assert listed(**{"class": "iModels"}) == []
    other = http.get(f"/itwins/{FORBIDDEN_ITWIN_ID}/repositories", headers=headers)
    assert other.json() == {"repositories": []}


@pytest.mark.parametrize(
    ("params", "targets"),
    [
        ({"class": "Nonsense"}, ["class"]),
        ({"subClass": "WebMapService"}, ["subClass"]),
        ({"class": "Construction", "subClass": "WebMapService"}, ["subClass"]),
        ({"class": "Nonsense", "subClass": "Nonsense"}, ["class", "subClass"]),
    ],
)
def test_list_repositories_with_a_bad_filter(
    http: httpx.Client, headers: dict[str, str], params: dict[str, str], targets: list[str]
) -> None:
    response = http.get(f"/itwins/{ITWIN}/repositories", params=params, headers=headers)

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["message"]) == (
        "InvalidiTwinsRequest",
        "Cannot query iTwin Repositories.",
    )
    assert [(d["code"], d["target"]) for d in error["details"]] == [
        ("InvalidValue", target) for target in targets
    ]


def test_get_repository(http: httpx.Client, headers: dict[str, str]) -> None:
    repository = add_repository(http, headers)
    path = f"/itwins/{ITWIN}/repositories/{repository['id']}"
    assert http.get(path, headers=headers).json() == {"repository": repository}
    missing = http.get(f"/itwins/{ITWIN}/repositories/{UNKNOWN}", headers=headers)
    assert (missing.status_code, missing.json()) == (404, REPOSITORY_NOT_FOUND)
    elsewhere = http.get(f"/itwins/{UNKNOWN}/repositories/{repository['id']}", headers=headers)
    assert (elsewhere.status_code, elsewhere.json()) == (404, ITWIN_NOT_FOUND)


def test_patch_repository_changes_only_what_is_given(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    repository = add_repository(http, headers)
    path = f"/itwins/{ITWIN}/repositories/{repository['id']}"
    authentication = {"type": "Header", "key": "X-Api-Key", "value": "k1"}
    options = {"queryParameters": {"apiVersion": "1.5.1"}, "minimumLevel": 10}

    first = http.patch(
        path,
        json={"displayName": "Maps", "authentication": authentication, "options": options},
        headers=headers,
    )
    assert first.status_code == 200, first.text
    assert first.json()["repository"] == {
        **repository,
        "displayName": "Maps",
        "authentication": authentication,
        "options": options,
    }
    second = http.patch(path, json={"uri": "https://x/v2", "options": None}, headers=headers)
    assert second.json()["repository"] == {
        **repository,
        "displayName": "Maps",
        "uri": "https://x/v2",
        "authentication": authentication,
    }
    assert http.get(path, headers=headers).json() == second.json()
    assert http.patch(path, json={}, headers=headers).json() == second.json()


@pytest.mark.parametrize(
    ("body", "targets"),
    [
        ({"uri": ""}, ["uri"]),
        ({"uri": None}, ["uri"]),
        ({"displayName": None}, ["displayName"]),
        ({"authentication": "secret"}, ["authentication"]),
        ({"class": "Construction"}, ["class"]),
        ({"subClass": "MapServer", "id": "x"}, ["subClass", "id"]),
    ],
)
def test_patch_repository_rules(
    http: httpx.Client, headers: dict[str, str], body: dict[str, Any], targets: list[str]
) -> None:
    repository = add_repository(http, headers)
    path = f"/itwins/{ITWIN}/repositories/{repository['id']}"
    response = http.patch(path, json=body, headers=headers)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "InvalidiTwinsRequest"
    assert [detail["target"] for detail in error["details"]] == targets
    assert http.get(path, headers=headers).json() == {"repository": repository}


def test_patch_repository_to_a_taken_uri_conflicts(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    taken = add_repository(http, headers)
    repository = add_repository(http, headers)
    path = f"/itwins/{ITWIN}/repositories/{repository['id']}"
    response = http.patch(path, json={"uri": taken["uri"]}, headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (
        409,
        "iTwinRepositoryExists",
    )
    same = http.patch(path, json={"uri": repository["uri"]}, headers=headers)
    assert same.status_code == 200


def test_delete_repository_frees_its_uri(http: httpx.Client, headers: dict[str, str]) -> None:
    repository = add_repository(http, headers)
    path = f"/itwins/{ITWIN}/repositories/{repository['id']}"
    response = http.delete(path, headers=headers)
    assert (response.status_code, response.content) == (204, b"")
    assert http.get(path, headers=headers).json() == REPOSITORY_NOT_FOUND
    assert http.delete(path, headers=headers).json() == REPOSITORY_NOT_FOUND
    add_repository(http, headers, uri=repository["uri"])


def test_repository_writes_in_a_forbidden_itwin_are_403(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    path = f"/itwins/{FORBIDDEN_ITWIN_ID}/repositories/{UNKNOWN}"
    assert http.patch(path, json={}, headers=headers).status_code == 403
    assert http.delete(path, headers=headers).status_code == 403
    assert http.get(path, headers=headers).json() == REPOSITORY_NOT_FOUND


# --- applications -----------------------------------------------------------------------------


def test_applications_come_50_a_page_following_next(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    made = [add_application(http, headers, f"app {i}")["id"] for i in range(120)]
    pages: list[list[str]] = []
    url: str | None = "/library/applications"
    while url is not None:
        response = http.get(url, headers=headers)
        assert response.status_code == 200, response.text
        document = response.json()
        pages.append([application["id"] for application in document["applications"]])
        following = document["_links"].get("next")
        url = following["href"] if following else None
        if len(pages) == 1:
            # Created between pages: listed once, at the end, nothing repeated or skipped.
            made.append(add_application(http, headers, "late")["id"])

    assert [len(page) for page in pages] == [50, 50, 21]
    assert [item for page in pages for item in page] == made


def test_an_unknown_continuation_token_is_refused(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    for token in ("nonsense", "YWZ0ZXI6eA", "%%%"):
        response = http.get(
            "/library/applications", params={"continuationToken": token}, headers=headers
        )
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["target"] == "continuationToken"


def test_get_put_delete_application(http: httpx.Client, headers: dict[str, str]) -> None:
    application = add_application(http, headers, "Revit")
    path = f"/library/applications/{application['id']}"
    assert http.get(path, headers=headers).json() == {"application": application}

    replaced = http.put(path, json={"displayName": "Revit", "version": "2"}, headers=headers)
    assert replaced.status_code == 200, replaced.text
    changed = replaced.json()["application"]
    assert {k: changed[k] for k in ("id", "displayName", "version", "createdDateTime")} == {
        "id": application["id"],
        "displayName": "Revit",
        "version": "2",
        "createdDateTime": application["createdDateTime"],
    }
    assert changed["lastModifiedDateTime"] >= application["lastModifiedDateTime"]
    # The old name and version are free again; the new ones are taken.
    add_application(http, headers, "Revit")
    clash = http.post(
        "/library/applications", json={"displayName": "Revit", "version": "2"}, headers=headers
    )
    assert clash.status_code == 409

    response = http.delete(path, headers=headers)
    assert (response.status_code, response.content) == (204, b"")
    assert http.get(path, headers=headers).json() == APPLICATION_NOT_FOUND
    assert http.put(path, json={"displayName": "a", "version": "b"}, headers=headers).json() == (
        APPLICATION_NOT_FOUND
    )


def test_put_application_rules_and_conflicts(
    http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle
) -> None:
    application = add_application(http, headers, "Revit")
    add_application(http, headers, "MicroStation")
    path = f"/library/applications/{application['id']}"

    bad = http.put(path, json={"displayName": "Re>vit", "version": "x" * 251}, headers=headers)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "InvalidUpdateApplicationRequest"
    assert [d["target"] for d in bad.json()["error"]["details"]] == ["displayName", "version"]
    taken = http.put(path, json={"displayName": "MicroStation", "version": "1"}, headers=headers)
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "ApplicationExists")
    same = http.put(path, json={"displayName": "Revit", "version": "1"}, headers=headers)
    assert same.status_code == 200

    sim.configure(library_forbidden=True)
    for response in (
        http.put(path, json={"displayName": "Revit", "version": "3"}, headers=headers),
        http.delete(path, headers=headers),
    ):
        assert (response.status_code, response.json()["error"]["code"]) == (
            403,
            "InsufficientPermissions",
        )
    assert http.get(path, headers=headers).status_code == 200


# --- the shared pipeline: auth, throttling, the drop fault --------------------------------------

NEW_CALLS = [
    ("DELETE", f"/contextcapture/workspaces/{UNKNOWN}", "TooManyRequests"),
    ("DELETE", f"/contextcapture/jobs/{UNKNOWN}", "TooManyRequests"),
    ("GET", "/contextcapture/limits/engines", "RateLimitExceeded"),
    ("GET", f"/itwins/{ITWIN}/repositories", "RateLimitExceeded"),
    ("GET", f"/itwins/{ITWIN}/repositories/{UNKNOWN}", "RateLimitExceeded"),
    ("PATCH", f"/itwins/{ITWIN}/repositories/{UNKNOWN}", "TooManyRequests"),
    ("DELETE", f"/itwins/{ITWIN}/repositories/{UNKNOWN}", "TooManyRequests"),
    ("GET", "/library/applications", "RateLimitExceeded"),
    ("GET", f"/library/applications/{UNKNOWN}", "RateLimitExceeded"),
    ("PUT", f"/library/applications/{UNKNOWN}", "TooManyRequests"),
    ("DELETE", f"/library/applications/{UNKNOWN}", "TooManyRequests"),
]


@pytest.mark.parametrize(("method", "path", "throttled"), NEW_CALLS)
def test_new_calls_share_authentication_and_throttling(
    http: httpx.Client,
    headers: dict[str, str],
    sim: SimulatorHandle,
    method: str,
    path: str,
    throttled: str,
) -> None:
    body: dict[str, Any] | None = {} if method in {"PATCH", "PUT"} else None
    unauthenticated = http.request(method, path, json=body, headers={"Accept": ACCEPT_MEDIA_TYPE})
    assert (unauthenticated.status_code, unauthenticated.json()["error"]["code"]) == (
        401,
        "HeaderNotFound",
    )
    sim.storm(30, retry_after=7)
    storm = http.request(method, path, json=body, headers=headers)
    assert (storm.status_code, storm.json()["error"]["code"]) == (429, throttled)
    assert storm.headers["retry-after"] == "7"


def test_a_dropped_answer_took_effect_and_the_connection_was_closed(
    http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle, workspace: dict[str, Any]
) -> None:
    path = f"/contextcapture/workspaces/{workspace['id']}"
    sim.clear_requests()
    sim.drop_next(1)

    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        http.delete(path, headers=headers)
    again = http.delete(path, headers=headers)

    assert (again.status_code, again.json()) == (404, WORKSPACE_NOT_FOUND)
    assert [(r.method, r.status) for r in sim.requests()] == [("DELETE", None), ("DELETE", 404)]


def test_drop_after_rate_drops_processed_calls_only(
    http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle
) -> None:
    sim.configure(drop_after_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(
            "/library/applications", json={"displayName": "a", "version": "1"}, headers=headers
        )
    unauthenticated = http.get("/library/applications", headers={"Accept": ACCEPT_MEDIA_TYPE})
    assert unauthenticated.status_code == 401, "a call that was not processed keeps its answer"
    sim.configure(drop_after_rate=0.0)
    listed = http.get("/library/applications", headers=headers).json()["applications"]
    assert [application["displayName"] for application in listed] == ["a"]


def test_drop_knobs_are_validated_and_have_a_flag(sim: SimulatorHandle) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        sim.configure(drop_after_rate=1.5)
    with pytest.raises(httpx.HTTPStatusError):
        sim.drop_next(0)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--drop-after-rate", "0.25"]))
    assert config.drop_after_rate == 0.25
