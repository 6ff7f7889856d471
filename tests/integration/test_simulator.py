"""The simulator against the API pages, over real HTTP on a socket, as the worker sees it."""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.simulator import (
    ACCEPT_MEDIA_TYPE,
    DEFAULT_PORT,
    FORBIDDEN_ITWIN_ID,
    KNOWN_ITWIN_IDS,
    NO_CLUSTER_ITWIN_ID,
    SimulatorConfig,
    SimulatorHandle,
    add_arguments,
    config_from_args,
    running_simulator,
    serve,
)
from tests.support import free_port

OTHER_CLIENT = ("other-client", "other-secret")
ITWIN_ID = "60805594-3e04-43b5-8fd8-5ccae0de23cc"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

MISSING_AUTHORIZATION = {
    "error": {
        "code": "HeaderNotFound",
        "message": "Header Authorization was not found in the request. Access denied.",
    }
}
INVALID_TOKEN = {
    "error": {"code": "InvalidToken", "message": "The access token is invalid or has expired."}
}
TOO_MANY_REQUESTS = {
    "error": {
        "code": "TooManyRequests",
        "message": "More requests were received than the subscription rate-limit allows.",
    }
}
RATE_LIMIT_EXCEEDED = {
    "error": {
        "code": "RateLimitExceeded",
        "message": "The client sent more requests than allowed by this API "
        "for the current tier of the client.",
    }
}
INSUFFICIENT_PERMISSIONS = {
    "error": {
        "code": "InsufficientPermissions",
        "message": "The user has insufficient permissions for the requested operation.",
    }
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    config = SimulatorConfig(
        clients={"demo-client": "demo-secret", OTHER_CLIENT[0]: OTHER_CLIENT[1]}
    )
    with running_simulator(config) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _fresh_simulator(sim: SimulatorHandle) -> None:
    sim.reset()


@pytest.fixture
def http(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=5.0) as client:
        yield client


def request_token(http: httpx.Client, sim: SimulatorHandle, **form: str | None) -> httpx.Response:
    fields = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "scope": "itwin-platform",
    } | form
    return http.post(sim.token_url, data={k: v for k, v in fields.items() if v is not None})


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": ACCEPT_MEDIA_TYPE}


@pytest.fixture
def headers(http: httpx.Client, sim: SimulatorHandle) -> dict[str, str]:
    return auth_headers(request_token(http, sim).json()["access_token"])


def create_workspace(http: httpx.Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = http.post("/contextcapture/workspaces", json={"name": "ws"} | body, headers=headers)
    assert response.status_code == 201, response.text
    workspace: dict[str, Any] = response.json()["workspace"]
    return workspace


def job_body(workspace_id: str, **changes: Any) -> dict[str, Any]:
    """The page's example request, pointed at a real workspace."""
    return {
        "type": "Full",
        "name": "My first Reality Modeling job",
        "costEstimationParameters": {"gigaPixels": 2.5, "megaPoints": 1.5, "meshQuality": "Extra"},
        "inputs": [
            {"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4", "description": "Drone ImageCollection"},
            {"id": "dc65ce7d-2598-422f-97a5-5ae8eb004b67", "description": "Drone CCOrientations"},
        ],
        "workspaceId": workspace_id,
        "settings": {"quality": "Extra", "processingEngines": 5, "outputs": ["OBJ", "3MX"]},
    } | changes


def assert_uuid(value: str) -> None:
    assert str(uuid.UUID(value)) == value


# Every endpoint, with a body that would succeed, for the rules they all share.
ENDPOINTS = [
    ("POST", "/contextcapture/workspaces", {"name": "ws"}),
    ("GET", "/contextcapture/workspaces/00000000-0000-4000-8000-000000000000", None),
    ("POST", "/contextcapture/jobs", {}),
    ("POST", f"/itwins/{ITWIN_ID}/repositories", {}),
    ("POST", "/library/applications", {"displayName": "Revit", "version": "2019"}),
]
ENDPOINT_IDS = ["create-workspace", "get-workspace", "create-job", "create-repo", "create-app"]


def call(
    http: httpx.Client, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    return http.request(method, path, json=body, headers=headers)


# --- token endpoint ---------------------------------------------------------------------------


def test_token_is_issued_for_client_credentials(http: httpx.Client, sim: SimulatorHandle) -> None:
    response = request_token(http, sim)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert len(body["access_token"]) >= 32
    assert body["expires_in"] == 3600
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "itwin-platform"


def test_token_accepts_http_basic_client_authentication(
    http: httpx.Client, sim: SimulatorHandle
) -> None:
    response = http.post(
        sim.token_url,
        data={"grant_type": "client_credentials", "scope": "itwin-platform"},
        auth=(sim.client_id, sim.client_secret),
    )

    assert response.status_code == 200
    token = response.json()["access_token"]
    assert http.get("/contextcapture/workspaces/x", headers=auth_headers(token)).status_code == 404


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [("demo-client", "wrong"), ("nobody", "demo-secret"), ("other-client", "demo-secret")],
)
def test_token_refuses_unknown_client_or_wrong_secret(
    http: httpx.Client, sim: SimulatorHandle, client_id: str, secret: str
) -> None:
    response = request_token(http, sim, client_id=client_id, client_secret=secret)

    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client"}


def test_token_refuses_wrong_basic_credentials(http: httpx.Client, sim: SimulatorHandle) -> None:
    response = http.post(
        sim.token_url,
        data={"grant_type": "client_credentials", "scope": "itwin-platform"},
        auth=(sim.client_id, "wrong"),
    )

    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client"}
    assert response.headers["www-authenticate"].startswith("Basic")


def test_token_refuses_other_grant_types(http: httpx.Client, sim: SimulatorHandle) -> None:
    response = request_token(http, sim, grant_type="password")

    assert response.status_code == 400
    assert response.json() == {"error": "unsupported_grant_type"}


@pytest.mark.parametrize("missing", ["grant_type", "client_id", "client_secret", "scope"])
def test_token_refuses_missing_fields(
    http: httpx.Client, sim: SimulatorHandle, missing: str
) -> None:
    response = request_token(http, sim, **{missing: None})

    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request"}


def test_token_endpoint_can_be_down(http: httpx.Client, sim: SimulatorHandle) -> None:
    sim.configure(token_endpoint_down=True)

    response = request_token(http, sim)
    assert response.status_code == 503
    assert response.json() == {"error": "temporarily_unavailable"}
    sim.configure(token_endpoint_down=False)
    assert request_token(http, sim).status_code == 200


def test_token_lifetime_is_configurable(http: httpx.Client, sim: SimulatorHandle) -> None:
    sim.configure(token_lifetime_seconds=120)

    assert request_token(http, sim).json()["expires_in"] == 120


# --- rules shared by every endpoint -----------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_missing_authorization_is_refused(
    http: httpx.Client, method: str, path: str, body: Any
) -> None:
    response = call(http, method, path, body, {"Accept": ACCEPT_MEDIA_TYPE})

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json() == MISSING_AUTHORIZATION


@pytest.mark.parametrize(
    "authorization", ["Bearer not-a-token-of-ours", "Basic ZGVtbzpzZWNyZXQ=", "Bearer"]
)
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_foreign_or_malformed_token_is_refused(
    http: httpx.Client, method: str, path: str, body: Any, authorization: str
) -> None:
    headers = {"Authorization": authorization, "Accept": ACCEPT_MEDIA_TYPE}

    response = call(http, method, path, body, headers)

    assert response.status_code == 401
    assert response.json() == INVALID_TOKEN


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_expired_token_is_refused(
    http: httpx.Client,
    sim: SimulatorHandle,
    headers: dict[str, str],
    method: str,
    path: str,
    body: Any,
) -> None:
    sim.expire_tokens()

    response = call(http, method, path, body, headers)

    assert response.status_code == 401
    assert response.json() == INVALID_TOKEN
    fresh = auth_headers(request_token(http, sim).json()["access_token"])
    assert call(http, method, path, body, fresh).status_code != 401


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_missing_accept_is_refused(
    http: httpx.Client, headers: dict[str, str], method: str, path: str, body: Any
) -> None:
    request = http.build_request(method, path, json=body, headers=headers)
    del request.headers["accept"]

    response = http.send(request)

    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "code": "HeaderNotFound",
            "message": "Header Accept was not found in the request. Access denied.",
        }
    }


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        "*/*",
        "application/vnd.bentley.v2+json",
        "text/html",
        f"application/json;q=0.5, {ACCEPT_MEDIA_TYPE}; charset=utf-8",
    ],
)
def test_any_accept_gets_the_same_answer_as_the_recommended_one(
    http: httpx.Client, headers: dict[str, str], accept: str
) -> None:
    created = create_workspace(http, headers)
    path = f"/contextcapture/workspaces/{created['id']}"

    response = http.get(path, headers=headers | {"Accept": accept})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == http.get(path, headers=headers).json() == {"workspace": created}


@pytest.mark.parametrize(
    ("path", "code", "message", "detail_code"),
    [
        (
            "/contextcapture/workspaces",
            "InvalidContextCaptureRequest",
            "Cannot create workspace.",
            "InvalidParameter",
        ),
        (
            "/contextcapture/jobs",
            "InvalidContextCaptureRequest",
            "Cannot create job.",
            "InvalidParameter",
        ),
        (
            f"/itwins/{ITWIN_ID}/repositories",
            "InvalidiTwinsRequest",
            "Cannot add iTwin Repository.",
            "InvalidValue",
        ),
        (
            "/library/applications",
            "InvalidCreateApplicationRequest",
            "Cannot create application.",
            "InvalidValue",
        ),
    ],
)
@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", b'{"name": NaN}'])
def test_body_that_is_not_a_json_object_gets_the_pages_422(
    http: httpx.Client,
    headers: dict[str, str],
    path: str,
    code: str,
    message: str,
    detail_code: str,
    content: bytes,
) -> None:
    response = http.post(path, content=content, headers=headers)

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": code,
            "message": message,
            "details": [
                {"code": detail_code, "message": "The request body must be a JSON object."}
            ],
        }
    }


def test_unknown_path_is_not_found(http: httpx.Client, headers: dict[str, str]) -> None:
    for path in ("/nowhere", "/contextcapture/workspaces/a/b", "/contextcapture/jobs/"):
        response = http.get(path, headers=headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "ResourceNotFound"


def test_wrong_method_is_not_allowed(http: httpx.Client, headers: dict[str, str]) -> None:
    response = http.delete("/contextcapture/jobs", headers=headers)

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "MethodNotAllowed"


# --- workspaces -------------------------------------------------------------------------------


def test_create_workspace(http: httpx.Client, headers: dict[str, str]) -> None:
    response = http.post(
        "/contextcapture/workspaces",
        json={"name": "Workspace test", "iTwinId": ITWIN_ID},
        headers=headers,
    )

    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    workspace = response.json()["workspace"]
    assert list(workspace) == ["id", "createdDateTime", "name", "iTwinId", "contextCaptureVersion"]
    assert_uuid(workspace["id"])
    assert TIMESTAMP.match(workspace["createdDateTime"])
    assert workspace["name"] == "Workspace test"
    assert workspace["iTwinId"] == ITWIN_ID
    assert workspace["contextCaptureVersion"] == "20.1"


def test_create_workspace_without_itwin(http: httpx.Client, headers: dict[str, str]) -> None:
    workspace = create_workspace(http, headers, iTwinId=None)

    assert set(workspace) == {"id", "createdDateTime", "name", "contextCaptureVersion"}


@pytest.mark.parametrize(
    ("body", "target"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
        ({"name": "w", "iTwinId": 1}, "iTwinId"),
    ],
)
def test_create_workspace_with_bad_field(
    http: httpx.Client, headers: dict[str, str], body: dict[str, Any], target: str
) -> None:
    response = http.post("/contextcapture/workspaces", json=body, headers=headers)

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "InvalidContextCaptureRequest",
            "message": "Cannot create workspace.",
            "details": [
                {
                    "code": "InvalidParameter",
                    "message": f"Invalid '{target}' parameter.",
                    "target": target,
                }
            ],
        }
    }


def test_create_workspace_where_there_is_no_cluster(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    response = http.post(
        "/contextcapture/workspaces",
        json={"name": "w", "iTwinId": NO_CLUSTER_ITWIN_ID},
        headers=headers,
    )

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "InvalidContextCaptureRequest",
            "message": "Cannot create workspace.",
            "details": [
                {
                    "code": "InvalidParameter",
                    "message": "No processing cluster in project location.",
                }
            ],
        }
    }


def test_get_workspace(http: httpx.Client, headers: dict[str, str]) -> None:
    created = create_workspace(http, headers, iTwinId=ITWIN_ID)

    response = http.get(f"/contextcapture/workspaces/{created['id']}", headers=headers)

    assert response.status_code == 200
    assert response.json() == {"workspace": created}


@pytest.mark.parametrize("transform", [str.upper, lambda s: s + " ", lambda s: "x" + s])
def test_get_unknown_workspace(http: httpx.Client, headers: dict[str, str], transform: Any) -> None:
    created = create_workspace(http, headers)

    response = http.get(f"/contextcapture/workspaces/{transform(created['id'])}", headers=headers)

    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "WorkspaceNotFound", "message": "Requested workspace is not available."}
    }


# --- jobs -------------------------------------------------------------------------------------


def test_create_job_as_on_the_page(http: httpx.Client, headers: dict[str, str]) -> None:
    workspace = create_workspace(http, headers, iTwinId=ITWIN_ID)
    body = job_body(workspace["id"])
    body["settings"]["cacheSettings"] = {"createCache": True, "useCache": "799b11bd"}

    response = http.post("/contextcapture/jobs", json=body, headers=headers)

    assert response.status_code == 201
    job = response.json()["job"]
    assert list(job) == [
        "id",
        "name",
        "type",
        "state",
        "createdDateTime",
        "lastModifiedDateTime",
        "iTwinId",
        "location",
        "email",
        "workspaceId",
        "inputs",
        "jobSettings",
        "costEstimationParameters",
        "estimatedCost",
    ]
    assert_uuid(job["id"])
    assert job["name"] == "My first Reality Modeling job"
    assert job["type"] == "Full"
    assert job["state"] == "unsubmitted"
    assert TIMESTAMP.match(job["createdDateTime"])
    assert job["lastModifiedDateTime"] == job["createdDateTime"]
    assert job["iTwinId"] == ITWIN_ID
    assert job["location"] == "East US"
    assert job["email"] == "demo-client@apps.imsoidc.bentley.com"
    assert job["workspaceId"] == workspace["id"]
    assert job["inputs"] == body["inputs"]
    settings = job["jobSettings"]
    assert [output["format"] for output in settings["outputs"]] == ["OBJ", "3MX"]
    for output in settings["outputs"]:
        assert_uuid(output["id"])
    assert settings["quality"] == "Extra"
    assert settings["processingEngines"] == 5
    assert settings["cacheSettings"] == {"createCache": True, "useCache": "799b11bd"}
    assert job["costEstimationParameters"] == body["costEstimationParameters"]
    # Extra costs 1.5 per gigapixel, a megapoint a tenth of that: 1.5 * (2.5 + 0.15).
    assert job["estimatedCost"] == 3.975


def test_create_minimal_job(http: httpx.Client, headers: dict[str, str]) -> None:
    workspace = create_workspace(http, headers)
    body = job_body(workspace["id"], settings={}, type="Calibration")
    del body["costEstimationParameters"]

    response = http.post("/contextcapture/jobs", json=body, headers=headers)

    assert response.status_code == 201
    job = response.json()["job"]
    assert "iTwinId" not in job
    assert "costEstimationParameters" not in job
    assert "estimatedCost" not in job
    assert job["jobSettings"] == {"quality": "Medium", "outputs": [], "processingEngines": 0}


def _without(key: str) -> dict[str, Any]:
    return {key: None}


@pytest.mark.parametrize(
    ("changes", "targets"),
    [
        ({"type": "Nonsense"}, ["type"]),
        ({"type": None, "name": ""}, ["type", "name"]),
        ({"inputs": []}, ["inputs"]),
        ({"inputs": [{"id": "a"}, {"description": "no id"}, "x"]}, ["inputs[1].id", "inputs[2]"]),
        ({"inputs": [{"id": "a", "description": 5}]}, ["inputs[0].description"]),
        ({"settings": None}, ["settings"]),
        ({"settings": []}, ["settings"]),
        ({"settings": {"quality": "Ultra"}}, ["settings.quality"]),
        ({"settings": {"processingEngines": -1}}, ["settings.processingEngines"]),
        ({"settings": {"processingEngines": 21}}, ["settings.processingEngines"]),
        ({"settings": {"processingEngines": 2.5}}, ["settings.processingEngines"]),
        ({"settings": {"processingEngines": True}}, ["settings.processingEngines"]),
        ({"settings": {"outputs": ["OBJ", "obj", "LAS"]}}, ["settings.outputs[1]"]),
        ({"settings": {"outputs": "OBJ"}}, ["settings.outputs"]),
        (
            {"settings": {"cacheSettings": {"createCache": "yes", "useCache": 1}}},
            ["settings.cacheSettings.createCache", "settings.cacheSettings.useCache"],
        ),
        (
            {"costEstimationParameters": {"gigaPixels": "2"}},
            ["costEstimationParameters.gigaPixels"],
        ),
        ({"costEstimationParameters": {"megaPoints": -1}}, ["costEstimationParameters.megaPoints"]),
        (
            {"costEstimationParameters": {"meshQuality": "Best"}},
            ["costEstimationParameters.meshQuality"],
        ),
        ({"workspaceId": "6881117d-9fd2-4900-870b-9b721dc90f25"}, ["workspaceId"]),
        ({"workspaceId": 12}, ["workspaceId"]),
    ],
)
def test_create_job_with_bad_fields(
    http: httpx.Client, headers: dict[str, str], changes: dict[str, Any], targets: list[str]
) -> None:
    workspace = create_workspace(http, headers)

    response = http.post(
        "/contextcapture/jobs", json=job_body(workspace["id"], **changes), headers=headers
    )

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "InvalidContextCaptureRequest",
            "message": "Cannot create job.",
            "details": [
                {"code": "InvalidParameter", "message": f"Invalid '{t}' parameter.", "target": t}
                for t in targets
            ],
        }
    }


def test_create_job_with_empty_body_names_every_required_field(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    response = http.post("/contextcapture/jobs", json={}, headers=headers)

    assert response.status_code == 422
    targets = [d["target"] for d in response.json()["error"]["details"]]
    assert targets == ["type", "name", "workspaceId", "inputs", "settings"]


def test_engine_limit_is_configurable(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    workspace = create_workspace(http, headers)
    body = job_body(workspace["id"], settings={"processingEngines": 30})
    assert http.post("/contextcapture/jobs", json=body, headers=headers).status_code == 422

    sim.configure(engine_limit=30)

    response = http.post("/contextcapture/jobs", json=body, headers=headers)
    assert response.status_code == 201
    assert response.json()["job"]["jobSettings"]["processingEngines"] == 30


# --- repositories -----------------------------------------------------------------------------


def test_create_repository(http: httpx.Client, headers: dict[str, str]) -> None:
    body = {
        "class": "GeographicInformationSystem",
        "subClass": "WebMapTileService",
        "uri": "https://developer.bentley.com",
    }

    response = http.post(f"/itwins/{ITWIN_ID}/repositories", json=body, headers=headers)

    assert response.status_code == 201
    repository = response.json()["repository"]
    assert list(repository) == ["id", "class", "subClass", "uri"]
    assert_uuid(repository["id"])
    assert {k: repository[k] for k in body} == body


@pytest.mark.parametrize(
    ("class_", "sub_class"),
    [
        ("GeographicInformationSystem", "WebMapService"),
        ("GeographicInformationSystem", "MapServer"),
        ("Construction", "Performance"),
        ("Subsurface", "EvoWorkspace"),
    ],
)
def test_every_postable_repository_class(
    http: httpx.Client, headers: dict[str, str], class_: str, sub_class: str
) -> None:
    body = {"class": class_, "subClass": sub_class, "uri": "https://example.com/x"}

    for itwin_id in sorted(KNOWN_ITWIN_IDS):
        response = http.post(f"/itwins/{itwin_id}/repositories", json=body, headers=headers)
        assert response.status_code == 201


MISSING_CLASS = {
    "code": "MissingRequiredProperty",
    "message": "A required property is missing or empty.",
    "target": "class",
}
MISSING_URI = MISSING_CLASS | {"target": "uri"}
BAD_CLASS = {"code": "InvalidValue", "message": "Class value is incorrect.", "target": "class"}
BAD_SUBCLASS = {
    "code": "InvalidValue",
    "message": "SubClass value is incorrect.",
    "target": "subClass",
}


@pytest.mark.parametrize(
    ("body", "details"),
    [
        ({}, [MISSING_CLASS, MISSING_URI]),
        ({"class": "", "uri": ""}, [MISSING_CLASS, MISSING_URI]),
        ({"class": "iModels", "subClass": "MapServer", "uri": "u"}, [BAD_CLASS]),
        ({"class": ["x"], "uri": "u"}, [BAD_CLASS]),
        ({"class": "Construction", "subClass": "MapServer", "uri": "u"}, [BAD_SUBCLASS]),
        ({"class": "Construction", "uri": "u"}, [BAD_SUBCLASS]),
        ({"class": "Subsurface", "subClass": "EvoWorkspace", "uri": 3}, [MISSING_URI]),
    ],
)
def test_create_repository_with_bad_fields(
    http: httpx.Client, headers: dict[str, str], body: dict[str, Any], details: list[Any]
) -> None:
    response = http.post(f"/itwins/{ITWIN_ID}/repositories", json=body, headers=headers)

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "InvalidiTwinsRequest",
            "message": "Cannot add iTwin Repository.",
            "details": details,
        }
    }


def test_create_repository_twice_conflicts(http: httpx.Client, headers: dict[str, str]) -> None:
    body = {"class": "Construction", "subClass": "Performance", "uri": "https://a.example"}
    other_itwin = next(i for i in sorted(KNOWN_ITWIN_IDS) if i != ITWIN_ID)
    assert http.post(f"/itwins/{ITWIN_ID}/repositories", json=body, headers=headers).is_success

    response = http.post(f"/itwins/{ITWIN_ID}/repositories", json=body, headers=headers)

    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "code": "iTwinRepositoryExists",
            "message": "The specified iTwin Repository already exists.",
        }
    }
    assert http.post(f"/itwins/{other_itwin}/repositories", json=body, headers=headers).is_success


@pytest.mark.parametrize("itwin_id", [str(uuid.uuid4()), ITWIN_ID.upper(), "x"])
def test_create_repository_in_unknown_itwin(
    http: httpx.Client, headers: dict[str, str], itwin_id: str
) -> None:
    body = {"class": "Construction", "subClass": "Performance", "uri": "https://a.example"}

    response = http.post(f"/itwins/{itwin_id}/repositories", json=body, headers=headers)

    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "iTwinNotFound", "message": "Requested iTwin is not available."}
    }


def test_create_repository_without_permission(http: httpx.Client, headers: dict[str, str]) -> None:
    body = {"class": "Construction", "subClass": "Performance", "uri": "https://a.example"}

    response = http.post(f"/itwins/{FORBIDDEN_ITWIN_ID}/repositories", json=body, headers=headers)

    assert response.status_code == 403
    assert response.json() == INSUFFICIENT_PERMISSIONS


# --- applications -----------------------------------------------------------------------------


def test_create_application(http: httpx.Client, headers: dict[str, str]) -> None:
    response = http.post(
        "/library/applications", json={"displayName": "Revit", "version": "2019"}, headers=headers
    )

    assert response.status_code == 201
    application = response.json()["application"]
    assert list(application) == [
        "id",
        "displayName",
        "version",
        "createdDateTime",
        "lastModifiedDateTime",
    ]
    assert_uuid(application["id"])
    assert application["displayName"] == "Revit"
    assert application["version"] == "2019"
    assert TIMESTAMP.match(application["createdDateTime"])
    assert application["lastModifiedDateTime"] == application["createdDateTime"]


def _app_detail(code: str, message: str, target: str) -> dict[str, str]:
    return {"code": code, "message": message, "target": target}


SPECIALS = "must not include these special characters. >, <, ^, $, ?, ||."


@pytest.mark.parametrize(
    ("body", "details"),
    [
        (
            {},
            [
                _app_detail(
                    "MissingRequiredProperty", "Required property is missing.", "displayName"
                ),
                _app_detail("MissingRequiredProperty", "Required property is missing.", "version"),
            ],
        ),
        (
            {"displayName": "", "version": 2019},
            [
                _app_detail(
                    "MissingRequiredProperty", "Required property is missing.", "displayName"
                ),
                _app_detail("MissingRequiredProperty", "Required property is missing.", "version"),
            ],
        ),
        (
            {"displayName": "x" * 251, "version": "1"},
            [_app_detail("InvalidValue", "DisplayName is over '250' length limit.", "displayName")],
        ),
        (
            {"displayName": "a", "version": "v" * 251},
            [_app_detail("InvalidValue", "Version is over '250' length limit.", "version")],
        ),
        (
            {"displayName": "Rev<it", "version": "20||19"},
            [
                _app_detail("InvalidValue", f"DisplayName {SPECIALS}", "displayName"),
                _app_detail("InvalidValue", f"Version {SPECIALS}", "version"),
            ],
        ),
        (
            {"displayName": "?" * 251, "version": "1"},
            [
                _app_detail(
                    "InvalidValue", "DisplayName is over '250' length limit.", "displayName"
                ),
                _app_detail("InvalidValue", f"DisplayName {SPECIALS}", "displayName"),
            ],
        ),
    ],
)
def test_create_application_with_bad_fields(
    http: httpx.Client, headers: dict[str, str], body: dict[str, Any], details: list[Any]
) -> None:
    response = http.post("/library/applications", json=body, headers=headers)

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "InvalidCreateApplicationRequest",
            "message": "Cannot create application.",
            "details": details,
        }
    }


@pytest.mark.parametrize("name", [">", "<", "^", "$", "?", "a||b"])
def test_each_special_character_is_refused(
    http: httpx.Client, headers: dict[str, str], name: str
) -> None:
    response = http.post(
        "/library/applications", json={"displayName": name, "version": "1"}, headers=headers
    )

    assert response.status_code == 422


def test_application_names_at_the_limits_are_accepted(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    body = {"displayName": "a|b " + "x" * 246, "version": "v" * 250}

    assert http.post("/library/applications", json=body, headers=headers).status_code == 201


def test_create_application_twice_conflicts(http: httpx.Client, headers: dict[str, str]) -> None:
    body = {"displayName": "Revit", "version": "2019"}
    assert http.post("/library/applications", json=body, headers=headers).status_code == 201

    response = http.post("/library/applications", json=body, headers=headers)

    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "code": "ApplicationExists",
            "message": "Application with the same name and version already exists "
            "within the organization.",
        }
    }
    other_version = body | {"version": "2020"}
    assert http.post("/library/applications", json=other_version, headers=headers).is_success


def test_create_application_without_permission(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    sim.configure(library_forbidden=True)

    response = http.post(
        "/library/applications", json={"displayName": "Revit", "version": "2019"}, headers=headers
    )

    assert response.status_code == 403
    assert response.json() == INSUFFICIENT_PERMISSIONS


# --- rate limiting ----------------------------------------------------------------------------


def assert_throttled(response: httpx.Response, body: dict[str, Any], retry_after: int) -> None:
    assert response.status_code == 429
    assert response.json() == body
    assert response.headers["retry-after"] == str(retry_after)
    assert response.headers["iTwinPlatform-RateLimit-Retry-After-Seconds"] == str(retry_after)
    assert response.headers["iTwinPlatform-RateLimit-RemainingCalls"] == "0"
    assert response.headers["iTwinPlatform-Tier"] == "Community"


def test_own_rate_limit(http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]) -> None:
    sim.configure(rate_limit_per_second=0.5, rate_limit_burst=2)
    workspace = create_workspace(http, headers)
    path = f"/contextcapture/workspaces/{workspace['id']}"

    assert http.get(path, headers=headers).status_code == 200
    assert_throttled(http.get(path, headers=headers), RATE_LIMIT_EXCEEDED, 2)
    assert_throttled(
        http.post("/contextcapture/workspaces", json={"name": "w"}, headers=headers),
        TOO_MANY_REQUESTS,
        2,
    )
    # Throttled calls are logged; the admin API itself is never throttled.
    assert [r.status for r in sim.requests()] == [201, 200, 429, 429]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [e for e in ENDPOINTS if e[0] == "POST"],
    ids=[i for i, e in zip(ENDPOINT_IDS, ENDPOINTS, strict=True) if e[0] == "POST"],
)
def test_create_pages_throttle_with_too_many_requests(
    http: httpx.Client,
    sim: SimulatorHandle,
    headers: dict[str, str],
    method: str,
    path: str,
    body: Any,
) -> None:
    sim.configure(rate_limit_per_second=1, rate_limit_burst=1)
    call(http, method, path, body, headers)

    assert_throttled(call(http, method, path, body, headers), TOO_MANY_REQUESTS, 1)


def test_own_rate_limit_says_at_least_the_configured_retry_after(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    sim.configure(rate_limit_per_second=100, rate_limit_burst=1, retry_after_seconds=7)
    create_workspace(http, headers)

    response = http.post("/contextcapture/workspaces", json={"name": "w"}, headers=headers)

    assert_throttled(response, TOO_MANY_REQUESTS, 7)


def test_throttling_comes_before_authentication(http: httpx.Client, sim: SimulatorHandle) -> None:
    sim.configure(rate_limit_per_second=1, rate_limit_burst=1)
    no_token = {"Accept": ACCEPT_MEDIA_TYPE}

    assert http.post("/contextcapture/workspaces", json={}, headers=no_token).status_code == 401
    response = http.post("/contextcapture/workspaces", json={}, headers=no_token)
    assert_throttled(response, TOO_MANY_REQUESTS, 1)


def test_rate_limit_is_per_client(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    sim.configure(rate_limit_per_second=1, rate_limit_burst=1)
    other = request_token(http, sim, client_id=OTHER_CLIENT[0], client_secret=OTHER_CLIENT[1])
    other_headers = auth_headers(other.json()["access_token"])

    create_workspace(http, headers)
    assert (
        http.post("/contextcapture/workspaces", json={"name": "w"}, headers=headers).status_code
        == 429
    )
    create_workspace(http, other_headers)
    # The token endpoint has no limit of its own.
    assert request_token(http, sim).status_code == 200


def test_rate_limit_refills(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    sim.configure(rate_limit_per_second=20, rate_limit_burst=1)
    create_workspace(http, headers)
    assert (
        http.post("/contextcapture/workspaces", json={"name": "w"}, headers=headers).status_code
        == 429
    )

    time.sleep(0.1)

    create_workspace(http, headers)


def test_storm(http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]) -> None:
    workspace = create_workspace(http, headers)
    before = time.time()

    sim.storm(0.5, retry_after=7)

    response = http.post("/contextcapture/workspaces", json={"name": "w"}, headers=headers)
    assert_throttled(response, TOO_MANY_REQUESTS, 7)
    path = f"/contextcapture/workspaces/{workspace['id']}"
    assert_throttled(http.get(path, headers=headers), RATE_LIMIT_EXCEEDED, 7)
    assert_throttled(http.get(path), RATE_LIMIT_EXCEEDED, 7)
    assert request_token(http, sim).status_code == 200
    time.sleep(0.5)
    assert http.get(path, headers=headers).status_code == 200
    (storm,) = sim.requests(kind="storm")
    assert before <= storm.t <= time.time()
    assert storm.until == pytest.approx(storm.t + 0.5)
    assert storm.retry_after == 7


def test_storm_says_its_remaining_time_by_default(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    sim.storm(2.5)

    response = http.post("/contextcapture/workspaces", json={"name": "w"}, headers=headers)

    assert_throttled(response, TOO_MANY_REQUESTS, 3)
    sim.reset()
    assert http.post("/contextcapture/workspaces", json={"name": "w"}).status_code == 401


# --- injected faults --------------------------------------------------------------------------


def test_error_rate_answers_500_or_503_before_anything_else(
    http: httpx.Client, sim: SimulatorHandle
) -> None:
    sim.configure(error_rate=1.0)
    expected = {
        500: {
            "code": "InternalServerError",
            "message": "The server encountered an internal error.",
        },
        503: {"code": "ServiceUnavailable", "message": "The service is temporarily unavailable."},
    }

    seen = set()
    for _ in range(30):
        response = http.post("/contextcapture/workspaces", json={})
        assert response.json() == {"error": expected[response.status_code]}
        seen.add(response.status_code)

    assert seen == {500, 503}


def test_latency_is_added(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    sim.configure(latency_ms=150, jitter_ms=50)

    started = time.perf_counter()
    create_workspace(http, headers)
    elapsed = time.perf_counter() - started

    assert 0.15 <= elapsed < 1.0


def test_hung_request_is_answered_after_the_hang(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    sim.configure(hang_rate=1.0, hang_seconds=0.6)
    results: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: results.append(
            http.post("/contextcapture/workspaces", json={"name": "w"}, headers=headers)
        )
    )

    started = time.perf_counter()
    thread.start()
    time.sleep(0.3)
    (pending,) = sim.requests()
    assert pending.status is None
    thread.join()

    assert time.perf_counter() - started >= 0.6
    assert results[0].status_code == 201
    (answered,) = sim.requests()
    assert answered.status == 201


def test_hung_request_abandoned_by_the_client_stays_unanswered(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    sim.configure(hang_rate=1.0, hang_seconds=60)

    with pytest.raises(httpx.ReadTimeout):
        http.post("/contextcapture/workspaces", json={"name": "w"}, headers=headers, timeout=0.2)

    time.sleep(0.1)
    assert [r.status for r in sim.requests()] == [None]
    sim.configure(hang_rate=0.0)
    create_workspace(http, headers)


def test_shutdown_releases_hung_requests() -> None:
    results: list[httpx.Response] = []
    with running_simulator(SimulatorConfig(hang_rate=1.0)) as sim:
        thread = threading.Thread(
            target=lambda: results.append(
                httpx.post(f"{sim.base_url}/contextcapture/workspaces", json={}, timeout=10)
            )
        )
        thread.start()
        while not sim.requests():
            time.sleep(0.01)
        started = time.perf_counter()

    thread.join()
    assert time.perf_counter() - started < 3
    assert results[0].status_code == 503
    assert results[0].json() == {
        "error": {"code": "ServiceUnavailable", "message": "The simulator is shutting down."}
    }


# --- request log, config, reset ---------------------------------------------------------------


def test_request_log_records_arrivals(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    before = time.time()
    workspace = create_workspace(http, headers)
    http.get(f"/contextcapture/workspaces/{workspace['id']}-nope", headers=headers)
    after = time.time()
    sim.configure(latency_ms=0)  # admin calls are not logged

    everything = sim.requests(kind=None)

    assert [(r.kind, r.method, r.path, r.status) for r in everything] == [
        ("token", "POST", "/connect/token", 200),
        ("api", "POST", "/contextcapture/workspaces", 201),
        ("api", "GET", f"/contextcapture/workspaces/{workspace['id']}-nope", 404),
    ]
    token_time, create_time, get_time = (r.t for r in everything)
    assert token_time <= before <= create_time <= get_time <= after
    assert [r.kind for r in sim.requests(kind="token")] == ["token"]
    assert len(sim.requests()) == 2

    sim.clear_requests()

    assert sim.requests(kind=None) == []


def test_configure_returns_the_config_without_secrets(sim: SimulatorHandle) -> None:
    config = sim.configure(error_rate=0.25, rate_limit_per_second=3.5)

    assert httpx.get(f"{sim.base_url}/_simulator/config").json() == config
    assert config == SimulatorConfig(error_rate=0.25, rate_limit_per_second=3.5).model_dump() | {
        "clients": {"demo-client": "********", "other-client": "********"}
    }


@pytest.mark.parametrize(
    "changes", [{"error_rate": 2}, {"latency_ms": -1}, {"no_such_knob": 1}, {"clients": {}}]
)
def test_configure_refuses_invalid_values(sim: SimulatorHandle, changes: dict[str, Any]) -> None:
    response = httpx.patch(f"{sim.base_url}/_simulator/config", json=changes)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "InvalidSimulatorRequest"
    assert response.json()["error"]["details"][0]["target"] == next(iter(changes))


def test_configure_can_replace_clients(http: httpx.Client, sim: SimulatorHandle) -> None:
    sim.configure(clients={"new-client": "new-secret"})

    assert request_token(http, sim).status_code == 401
    response = request_token(http, sim, client_id="new-client", client_secret="new-secret")
    assert response.status_code == 200


def test_reset_forgets_objects_tokens_and_config(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str]
) -> None:
    workspace = create_workspace(http, headers)
    sim.configure(engine_limit=1, latency_ms=5)

    sim.reset()

    assert sim.requests(kind=None) == []
    path = f"/contextcapture/workspaces/{workspace['id']}"
    assert http.get(path, headers=headers).json() == INVALID_TOKEN
    fresh = auth_headers(request_token(http, sim).json()["access_token"])
    assert http.get(path, headers=fresh).status_code == 404
    assert sim.configure()["engine_limit"] == 20


# --- running it -------------------------------------------------------------------------------


def test_cli_options_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    ns = parser.parse_args(
        [
            "--client",
            "a:b",
            "--client",
            "c:d:e",
            "--rate-limit",
            "5",
            "--burst",
            "3",
            "--engine-limit",
            "0",
            "--token-endpoint-down",
            "--error-rate",
            "0.1",
        ]
    )
    config = config_from_args(ns)

    assert (ns.host, ns.port) == ("127.0.0.1", DEFAULT_PORT)
    assert config.clients == {"a": "b", "c": "d:e"}
    assert config.rate_limit_per_second == 5
    assert config.rate_limit_burst == 3
    assert config.engine_limit == 0
    assert config.token_endpoint_down is True
    assert config.error_rate == 0.1
    assert config.library_forbidden is False
    assert config_from_args(parser.parse_args([])) == SimulatorConfig()


def test_cli_names_the_bad_option() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    with pytest.raises(ValueError, match="--error-rate"):
        config_from_args(parser.parse_args(["--error-rate", "3"]))


async def test_serve_runs_in_the_current_loop_until_cancelled() -> None:
    port = free_port()
    task = asyncio.create_task(serve(SimulatorConfig(), "127.0.0.1", port))
    await asyncio.sleep(0)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.post("/contextcapture/workspaces", json={})
    assert response.json() == MISSING_AUTHORIZATION

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with socket.socket() as again:
        # Linux refuses this while anything still listens on the port, REUSEADDR or not.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
