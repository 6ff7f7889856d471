"""Every broken rule of a request in one 422, worded as each page words it.

One request per endpoint with rules, each breaking several rules at once: a client fixing its
request must learn everything wrong with it from the first answer, as the pages' examples show.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.simulator import NO_CLUSTER_ITWIN_ID, SimulatorHandle

ITWIN_ID = "60805594-3e04-43b5-8fd8-5ccae0de23cc"
SPECIALS = "must not include these special characters. >, <, ^, $, ?, ||."


@pytest.fixture
def http(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "scope": "itwin-platform",
    }
    with httpx.Client(base_url=sim.base_url, timeout=5.0) as client:
        token = client.post(sim.token_url, data=form).json()["access_token"]
        client.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})
        yield client


def unprocessable(response: httpx.Response, code: str, message: str) -> list[dict[str, str]]:
    """The details of a 422 with the page's code and message."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["message"]) == (code, message)
    details: list[dict[str, str]] = error["details"]
    return details


def invalid_parameter(target: str) -> dict[str, str]:
    return {
        "code": "InvalidParameter",
        "message": f"Invalid '{target}' parameter.",
        "target": target,
    }


def create_workspace(http: httpx.Client) -> str:
    response = http.post("/contextcapture/workspaces", json={"name": "ws"})
    assert response.status_code == 201, response.text
    workspace_id: str = response.json()["workspace"]["id"]
    return workspace_id


# --- workspaces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "details"),
    [
        ({"name": "", "iTwinId": 5}, [invalid_parameter("name"), invalid_parameter("iTwinId")]),
        (
            {"name": ["w"], "iTwinId": NO_CLUSTER_ITWIN_ID},
            [
                invalid_parameter("name"),
                {
                    "code": "InvalidParameter",
                    "message": "No processing cluster in project location.",
                },
            ],
        ),
    ],
)
def test_create_workspace_lists_every_broken_rule(
    http: httpx.Client, body: dict[str, Any], details: list[dict[str, str]]
) -> None:
    response = http.post("/contextcapture/workspaces", json=body)

    assert unprocessable(response, "InvalidContextCaptureRequest", "Cannot create workspace.") == (
        details
    )


# --- jobs -------------------------------------------------------------------------------------


def test_create_job_lists_every_broken_rule(http: httpx.Client) -> None:
    body = {
        "type": "Everything",
        "name": "",
        "workspaceId": "6881117d-9fd2-4900-870b-9b721dc90f25",
        "inputs": [{"id": "58e0c0ca"}, {"description": "no id"}],
        "settings": {"quality": "Ultra", "processingEngines": 99, "outputs": ["OBJ", "GIF"]},
        "costEstimationParameters": {"gigaPixels": -1, "meshQuality": "Best"},
    }

    response = http.post("/contextcapture/jobs", json=body)

    details = unprocessable(response, "InvalidContextCaptureRequest", "Cannot create job.")
    assert details == [
        invalid_parameter(target)
        for target in [
            "type",
            "name",
            "inputs[1].id",
            "settings.quality",
            "settings.processingEngines",
            "settings.outputs[1]",
            "costEstimationParameters.gigaPixels",
            "costEstimationParameters.meshQuality",
            "workspaceId",
        ]
    ]


def test_create_job_in_a_real_workspace_still_lists_every_other_rule(http: httpx.Client) -> None:
    body = {
        "type": "Full",
        "name": 7,
        "workspaceId": create_workspace(http),
        "inputs": "not a list",
        "settings": {"cacheSettings": {"createCache": "yes"}},
    }

    response = http.post("/contextcapture/jobs", json=body)

    details = unprocessable(response, "InvalidContextCaptureRequest", "Cannot create job.")
    assert details == [
        invalid_parameter(target)
        for target in ["name", "inputs", "settings.cacheSettings.createCache"]
    ]


# --- repositories -----------------------------------------------------------------------------

BAD_CLASS = {"code": "InvalidValue", "message": "Class value is incorrect.", "target": "class"}
BAD_SUBCLASS = {
    "code": "InvalidValue",
    "message": "SubClass value is incorrect.",
    "target": "subClass",
}
MISSING_CLASS = {
    "code": "MissingRequiredProperty",
    "message": "A required property is missing or empty.",
    "target": "class",
}
MISSING_URI = MISSING_CLASS | {"target": "uri"}


@pytest.mark.parametrize(
    ("body", "details"),
    [
        ({"class": "Nonsense", "subClass": "Nonsense"}, [BAD_CLASS, BAD_SUBCLASS, MISSING_URI]),
        ({"class": "iModels", "subClass": 3, "uri": ""}, [BAD_CLASS, BAD_SUBCLASS, MISSING_URI]),
        ({"subClass": "Tiles", "uri": None}, [MISSING_CLASS, BAD_SUBCLASS, MISSING_URI]),
        ({"class": "Construction", "subClass": "MapServer"}, [BAD_SUBCLASS, MISSING_URI]),
    ],
)
def test_create_repository_lists_every_broken_rule(
    http: httpx.Client, body: dict[str, Any], details: list[dict[str, str]]
) -> None:
    response = http.post(f"/itwins/{ITWIN_ID}/repositories", json=body)

    assert unprocessable(response, "InvalidiTwinsRequest", "Cannot add iTwin Repository.") == (
        details
    )


# --- applications -----------------------------------------------------------------------------


def test_create_application_lists_every_broken_rule(http: httpx.Client) -> None:
    body = {"displayName": "<" + "x" * 250, "version": "  "}

    response = http.post("/library/applications", json=body)

    details = unprocessable(
        response, "InvalidCreateApplicationRequest", "Cannot create application."
    )
    assert details == [
        {
            "code": "InvalidValue",
            "message": "DisplayName is over '250' length limit.",
            "target": "displayName",
        },
        {"code": "InvalidValue", "message": f"DisplayName {SPECIALS}", "target": "displayName"},
        {
            "code": "MissingRequiredProperty",
            "message": "Required property is missing.",
            "target": "version",
        },
    ]


def test_create_application_lists_both_fields_over_the_limit(http: httpx.Client) -> None:
    body = {"displayName": "a" * 251, "version": "1$" + "0" * 249}

    response = http.post("/library/applications", json=body)

    details = unprocessable(
        response, "InvalidCreateApplicationRequest", "Cannot create application."
    )
    assert [(d["target"], d["message"]) for d in details] == [
        ("displayName", "DisplayName is over '250' length limit."),
        ("version", "Version is over '250' length limit."),
        ("version", f"Version {SPECIALS}"),
    ]
