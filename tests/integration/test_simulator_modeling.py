"""The simulator's Reality Modeling v2 operations over real HTTP: create, get, cancel, progress,
messages and list jobs (filter, paging, both spellings of `$`), the bucket and the files.

Jobs run on a compressed clock (a simulated 10 s job takes 1 s); the whole course of a run is
checked against `ModelingRun` directly, with a made-up clock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.simulator import (
    ACCEPT_V2_MEDIA_TYPE,
    FORBIDDEN_ITWIN_ID,
    NO_CLUSTER_ITWIN_ID,
    SimulatorConfig,
    SimulatorHandle,
    running_simulator,
)
from service.simulator.lifecycle import Instant
from service.simulator.modeling_runs import ModelingRun
from tests.integration.test_simulator import ITWIN_ID, request_token

OTHER_ITWIN = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
ONE_SECOND_JOB = {"job_duration_seconds": 10, "time_scale": 0.1}
SECOND = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
LONG_JOB = {"job_duration_seconds": 3600}
"""Stays Queued for the whole test (six simulated minutes in the queue)."""
JOB_NOT_FOUND = {"error": {"code": "JobNotFound", "message": "Requested job is not available."}}
RECONSTRUCTION: dict[str, Any] = {
    "type": "Reconstruction",
    "name": "Bridge mesh",
    "iTwinId": ITWIN_ID,
    "specifications": {
        "inputs": {"scene": "1b1c8a2e-scene", "regionOfInterest": "bkt:roi.json"},
        "outputs": {"modelingReference": True, "exports": [{"format": "3DTiles"}]},
        "options": {"tilingMode": "Adaptive"},
    },
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
    token = request_token(http, sim).json()["access_token"]
    return {"Authorization": f"Bearer {token}", "Accept": ACCEPT_V2_MEDIA_TYPE}


def create(http: httpx.Client, headers: dict[str, str], **changes: Any) -> dict[str, Any]:
    response = http.post("/reality-modeling/jobs", json=RECONSTRUCTION | changes, headers=headers)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()["job"]
    return job


def invalid(*targets: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "InvalidRealityModelingRequest",
            "message": "Invalid request to Reality Modeling.",
            "details": [
                {"code": "InvalidProperty", "message": f"Invalid '{t}' property.", "target": t}
                for t in targets
            ],
        }
    }


def test_a_created_job_is_queued_at_once_with_its_outputs_made(
    http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle
) -> None:
    sim.configure(**LONG_JOB)
    job = create(http, headers)
    assert list(job) == [
        "id", "name", "type", "iTwinId", "state", "userId", "executionInfo", "specifications",
    ]  # fmt: skip
    assert (job["name"], job["type"], job["iTwinId"], job["state"]) == (
        "Bridge mesh", "Reconstruction", ITWIN_ID, "Queued",
    )  # fmt: skip
    assert list(job["executionInfo"]) == ["createdDateTime"]
    assert re.fullmatch(SECOND, job["executionInfo"]["createdDateTime"]), "whole seconds, Z"
    specifications = job["specifications"]
    assert specifications["inputs"] == RECONSTRUCTION["specifications"]["inputs"]
    assert specifications["options"] == {"tilingMode": "Adaptive"}
    outputs = specifications["outputs"]
    assert set(outputs["modelingReference"]) == {"location"}
    [export] = outputs["exports"]
    assert (export["format"], set(export)) == ("3DTiles", {"format", "location"})
    again = http.get(f"/reality-modeling/jobs/{job['id']}", headers=headers)
    assert again.json() == {"job": job}
    assert {r.accept for r in sim.requests()} == {ACCEPT_V2_MEDIA_TYPE}


@pytest.mark.parametrize(
    ("kind", "specifications", "outputs"),
    [
        ("Calibration", {"inputs": {"scene": "s"}, "outputs": ["scene", "report"]},
         {"scene", "report"}),
        ("Tiling", {"inputs": {"scene": "s"}, "outputs": ["modelingReference"]},
         {"modelingReference"}),
        ("FillImageProperties", {"inputs": {"imageCollections": ["c"]}, "outputs": ["scene"]},
         {"scene"}),
        ("ImportPointCloud", {"inputs": {"scene": "s"}, "outputs": ["scanCollection", "scene"]},
         {"scanCollection", "scene"}),
        ("GaussianSplats", {"inputs": {"anything": 1}, "outputs": ["splats"]}, {"splats"}),
    ],
)  # fmt: skip
def test_listed_outputs_are_answered_by_name(
    http: httpx.Client,
    headers: dict[str, str],
    kind: str,
    specifications: dict[str, Any],
    outputs: set[str],
) -> None:
    job = create(http, headers, type=kind, specifications=specifications)
    made = job["specifications"]["outputs"]
    assert set(made) == outputs
    if "report" in made:
        assert made["report"].startswith("bkt:")
    if kind == "Tiling":
        assert set(made["modelingReference"]) == {"location"}


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ({"type": "Objects2D"}, invalid("type")),
        ({"name": "ab", "iTwinId": 5}, invalid("iTwinId", "name")),
        ({"specifications": {"inputs": {}, "outputs": {"exports": [{"format": "FBX"}]}}},
         invalid("specifications.inputs.scene", "specifications.outputs.exports[0].format")),
        ({"specifications": {"inputs": {"scene": "s", "crsData": "crs.prj"}, "outputs": {}}},
         invalid("specifications.inputs.crsData")),
        ({"type": "Production", "specifications": {"inputs": {"scene": "s"}, "outputs": []}},
         invalid("specifications.inputs.modelingReference", "specifications.outputs")),
        ({"type": "FillImageProperties", "specifications": {"inputs": {}, "outputs": ["scene"]}},
         invalid("specifications.inputs")),
        ({"type": "Constraints", "specifications": {"inputs": [], "outputs": "x"}},
         invalid("specifications.inputs", "specifications.outputs")),
    ],
)  # fmt: skip
def test_a_bad_creation_names_every_bad_property(
    http: httpx.Client, headers: dict[str, str], body: dict[str, Any], answer: dict[str, Any]
) -> None:
    response = http.post("/reality-modeling/jobs", json=RECONSTRUCTION | body, headers=headers)
    assert (response.status_code, response.json()) == (400, answer)


def test_a_creation_for_an_itwin_not_there_or_not_ours(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    unknown = http.post(
        "/reality-modeling/jobs", json=RECONSTRUCTION | {"iTwinId": UNKNOWN_ID}, headers=headers
    )
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "iTwinNotFound")
    forbidden = http.post(
        "/reality-modeling/jobs",
        json=RECONSTRUCTION | {"iTwinId": FORBIDDEN_ITWIN_ID},
        headers=headers,
    )
    assert (forbidden.status_code, forbidden.json()["error"]["code"]) == (
        403, "InsufficientPermissions",
    )  # fmt: skip
    not_json = http.post("/reality-modeling/jobs", content=b"[1]", headers=headers)
    assert not_json.status_code == 400


def test_a_job_runs_from_queued_to_success_on_the_clock(
    http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle
) -> None:
    sim.configure(**ONE_SECOND_JOB)
    job_id = create(http, headers)["id"]
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + 5
    while not seen or seen[-1][1] != "Success":
        assert time.monotonic() < deadline
        progress = http.get(f"/reality-modeling/jobs/{job_id}/progress", headers=headers).json()
        assert set(progress["progress"]) == {"percentage", "state"}, "v2 progress has no step"
        seen.append((progress["progress"]["percentage"], progress["progress"]["state"]))
        time.sleep(0.05)
    states = [state for _, state in seen]
    assert states[0] == "Queued"
    assert "Active" in states
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)
    assert seen[-1] == (100, "Success")
    job = http.get(f"/reality-modeling/jobs/{job_id}", headers=headers).json()["job"]
    execution = job["executionInfo"]
    assert set(execution) == {
        "createdDateTime", "startedDateTime", "endedDateTime", "processingUnits",
    }  # fmt: skip
    assert execution["processingUnits"] == 1.0
    messages = http.get(f"/reality-modeling/jobs/{job_id}/messages", headers=headers).json()
    assert messages == {"messages": {"errors": [], "warnings": []}}


def test_a_failing_job_terminates_then_fails_with_its_messages(
    http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle
) -> None:
    sim.configure(**ONE_SECOND_JOB)
    job_id = create(http, headers)["id"]
    sim.set_job_outcome(job_id, "failed")
    states: list[str] = []
    deadline = time.monotonic() + 5
    while not states or states[-1] != "Failed":
        assert time.monotonic() < deadline
        job = http.get(f"/reality-modeling/jobs/{job_id}", headers=headers).json()["job"]
        states.append(job["state"])
        time.sleep(0.02)
    assert "TerminatingOnFailure" in states
    messages = http.get(f"/reality-modeling/jobs/{job_id}/messages", headers=headers).json()
    [error] = messages["messages"]["errors"]
    assert set(error) == {"code", "title", "message", "params"}
    with httpx.Client(base_url=sim.base_url) as admin:
        late = admin.post(f"/_simulator/jobs/{job_id}/outcome", json={"outcome": "success"})
    assert late.status_code == 409, "the outcome of an ended job cannot change"


def test_a_cancel_answers_the_job_terminating_then_it_is_cancelled(
    http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle
) -> None:
    sim.configure(job_duration_seconds=20, time_scale=0.1)  # 2 s; cancelling takes 0.2 s
    job_id = create(http, headers)["id"]
    time.sleep(0.5)
    cancelled = http.delete(f"/reality-modeling/jobs/{job_id}", headers=headers)
    assert cancelled.status_code == 200, "a cancel answers the job, not 204"
    job = cancelled.json()["job"]
    assert job["state"] == "TerminatingOnCancel"
    percentage = http.get(f"/reality-modeling/jobs/{job_id}/progress", headers=headers).json()
    again = http.delete(f"/reality-modeling/jobs/{job_id}", headers=headers)
    assert (again.status_code, again.json()["error"]["code"]) == (
        422, "InvalidRealityModelingRequest",
    )  # fmt: skip
    time.sleep(0.3)
    ended = http.get(f"/reality-modeling/jobs/{job_id}/progress", headers=headers).json()
    assert ended["progress"] == {
        "percentage": percentage["progress"]["percentage"], "state": "Cancelled",
    }, "the percentage stays where the cancel found it"  # fmt: skip
    job = http.get(f"/reality-modeling/jobs/{job_id}", headers=headers).json()["job"]
    assert "endedDateTime" in job["executionInfo"]
    assert http.delete(f"/reality-modeling/jobs/{job_id}", headers=headers).status_code == 422


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("suffix", ["", "/progress", "/messages"])
def test_an_unknown_job_is_not_found(
    http: httpx.Client, headers: dict[str, str], method: str, suffix: str
) -> None:
    if method == "DELETE" and suffix:
        return
    response = http.request(method, f"/reality-modeling/jobs/{UNKNOWN_ID}{suffix}", headers=headers)
    assert (response.status_code, response.json()) == (404, JOB_NOT_FOUND)


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["jobs"]]


def test_the_list_filters_by_each_field_and_operator(
    http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle
) -> None:
    sim.configure(**LONG_JOB)
    first = create(http, headers, name="first job")
    time.sleep(1.1)  # a second apart: createdDateTime has whole seconds
    tiling = {"inputs": {"scene": "s"}, "outputs": ["modelingReference"]}
    second = create(
        http, headers, type="Tiling", iTwinId=OTHER_ITWIN, name="it's second", specifications=tiling
    )
    http.delete(f"/reality-modeling/jobs/{first['id']}", headers=headers)

    def listed(job_filter: str) -> list[str]:
        return _ids(http.get("/reality-modeling/jobs", params={"$filter": job_filter},
                             headers=headers))  # fmt: skip

    both = [first["id"], second["id"]]
    created = second["executionInfo"]["createdDateTime"]
    assert listed(f"iTwinId eq {ITWIN_ID}") == [first["id"]]
    assert listed(f"iTwinId eq {OTHER_ITWIN.upper()}") == [second["id"]], "GUIDs ignore case"
    assert listed(f"iTwinId ne {ITWIN_ID}") == [second["id"]]
    assert listed("state eq 'TerminatingOnCancel'") == [first["id"]]
    assert listed("type eq 'Tiling' and state eq 'Queued'") == [second["id"]]
    assert listed("name eq 'it''s second'") == [second["id"]]
    assert listed(f"id eq '{first['id']}'") == [first["id"]]
    assert listed("email eq 'demo-client@apps.imsoidc.bentley.com'") == both
    assert listed(f"createdDateTime lt {created}") == [first["id"]]
    assert listed(f"createdDateTime le {created}") == both
    assert listed(f"createdDateTime ge {created}") == [second["id"]]
    assert listed(f"createdDateTime GT {created.replace('Z', '.0000000+00:00')}") == []
    assert listed("state eq 'Success'") == []


@pytest.mark.parametrize(
    ("job_filter", "target"),
    [
        ("state eq 'Queued' or state eq 'Active'", "$filter"),
        ("progress eq 5", "$filter"),
        ("state eq 'Queued", "$filter"),
        ("createdDateTime gt yesterday", "$filter"),
        ("state eq", "$filter"),
    ],
)
def test_a_filter_the_simulator_cannot_do_is_a_400(
    http: httpx.Client, headers: dict[str, str], job_filter: str, target: str
) -> None:
    response = http.get("/reality-modeling/jobs", params={"$filter": job_filter}, headers=headers)
    assert response.status_code == 400
    [problem] = response.json()["error"]["details"]
    assert (problem["code"], problem["target"]) == ("InvalidProperty", target)


@pytest.mark.parametrize(
    "query",
    ["", "?$top=5", "?%24filter=state+eq+'Queued'&%24top=0", "?$filter=state eq 'Queued'&$top=x",
     "?$filter=state eq 'Queued'&continuationToken=bm9wZQ"],
)  # fmt: skip
def test_a_list_without_a_filter_or_with_a_bad_top_or_token_is_a_400(
    http: httpx.Client, headers: dict[str, str], query: str
) -> None:
    assert http.get(f"/reality-modeling/jobs{query}", headers=headers).status_code == 400


def test_pages_follow_the_next_link_whichever_way_dollar_and_spaces_are_written(
    http: httpx.Client, headers: dict[str, str], sim: SimulatorHandle
) -> None:
    sim.configure(**LONG_JOB)
    made = [create(http, headers)["id"] for _ in range(5)]
    spellings = [
        f"?%24filter=iTwinId+eq+{ITWIN_ID}&%24top=2&continuationToken=",
        f"?$filter=iTwinId%20eq%20{ITWIN_ID}&$top=2",
    ]
    for query in spellings:
        page = http.get(f"/reality-modeling/jobs{query}", headers=headers)
        ids = _ids(page)
        while "_links" in page.json():
            href = page.json()["_links"]["next"]["href"]
            assert href.startswith(sim.base_url + "/reality-modeling/jobs?")
            page = http.get(href, headers=headers)
            ids += _ids(page)
        assert ids == made
    first = http.get(f"/reality-modeling/jobs{spellings[1]}", headers=headers).json()
    token = parse_qs(urlsplit(first["_links"]["next"]["href"]).query)["continuationToken"][0]
    newer = create(http, headers)["id"]
    only_token = http.get("/reality-modeling/jobs", params={"continuationToken": token},
                          headers=headers)  # fmt: skip
    assert _ids(only_token) == [*made[2:], newer], "a token alone goes on with its filter"
    last = http.get("/reality-modeling/jobs", params={"$filter": f"iTwinId eq {ITWIN_ID}",
                                                      "$top": "1000"}, headers=headers)  # fmt: skip
    assert len(_ids(last)) == 6
    assert "_links" not in last.json()


def test_the_bucket_of_an_itwin_and_the_preset_files(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    bucket = http.get(f"/reality-modeling/itwins/{ITWIN_ID}/bucket", headers=headers)
    assert bucket.json()["bucket"] == {"iTwinId": ITWIN_ID}
    assert bucket.json()["_links"]["containerUrl"]["href"].startswith("https://")
    missing = http.get(f"/reality-modeling/itwins/{UNKNOWN_ID}/bucket", headers=headers)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "iTwinNotFound")
    no_center = http.get(f"/reality-modeling/itwins/{NO_CLUSTER_ITWIN_ID}/bucket", headers=headers)
    assert no_center.status_code == 400
    assert no_center.json()["error"]["message"] == "Could not retrieve the bucket."
    files = http.get("/reality-modeling/files", headers=headers).json()["files"]
    assert files
    assert all(entry["type"] == "Preset" and {"id", "name"} <= set(entry) for entry in files)


def test_the_course_of_a_run_step_by_step() -> None:
    start = Instant(1000.0, datetime(2026, 1, 1, tzinfo=UTC))
    run = ModelingRun(start, 100.0, "success")
    course = [(run.state(1000.0 + t), run.percentage(1000.0 + t)) for t in (0, 9, 10, 55, 99, 100)]
    assert course == [
        ("Queued", 0), ("Queued", 0), ("Active", 0), ("Active", 50), ("Active", 90),
        ("Success", 100),
    ]  # fmt: skip
    assert run.ended(1100.0) == start.wall + timedelta(seconds=100)
    failing = ModelingRun(start, 100.0, "failed")
    assert [failing.state(1000.0 + t) for t in (89, 90, 99, 100)] == [
        "Active", "TerminatingOnFailure", "TerminatingOnFailure", "Failed",
    ]  # fmt: skip
    assert failing.percentage(1100.0) == 80, "where the failure began"
    cancelled = ModelingRun(start, 100.0, "success")
    cancelled.cancel(Instant(1005.0, start.wall + timedelta(seconds=5)))
    assert [cancelled.state(1000.0 + t) for t in (5, 14, 15)] == [
        "TerminatingOnCancel", "TerminatingOnCancel", "Cancelled",
    ]  # fmt: skip
    assert (cancelled.percentage(1050.0), cancelled.has_started(1050.0)) == (0, False)
