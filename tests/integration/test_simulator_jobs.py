"""The simulator's ContextCapture job lifecycle: get, submit, cancel, progress, outcomes.

Over real HTTP on a socket, with jobs shortened by `time_scale` so that whole runs take about a
second; the exact progress table is checked against the lifecycle directly, with a made-up clock.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.simulator import (
    SimulatorConfig,
    SimulatorHandle,
    add_arguments,
    config_from_args,
    running_simulator,
)
from service.simulator.lifecycle import Instant, Lifecycle
from tests.integration.test_simulator import (
    ITWIN_ID,
    MISSING_AUTHORIZATION,
    RATE_LIMIT_EXCEEDED,
    TIMESTAMP,
    TOO_MANY_REQUESTS,
    assert_throttled,
    auth_headers,
    create_workspace,
    job_body,
    request_token,
)

# The page's example job costs 1.5 * (2.5 + 0.15): see test_create_job_as_on_the_page.
ESTIMATED_COST = 3.975
ONE_SECOND_JOB = {"job_duration_seconds": 10, "time_scale": 0.1}
"""Ten simulated seconds at a tenth: one real second, 100 ms per percentage quantum."""
LONG_JOB = {"job_duration_seconds": 3600}
"""Stays in Preparing (0 %) for the whole test."""

UNSUBMITTED = {"percentage": 0, "state": "Unsubmitted", "step": ""}
PROGRESS_TABLE = [
    (0, "Preparing"),
    (10, "Calibration"),
    (20, "Calibration"),
    (30, "Reconstruction"),
    (40, "Reconstruction"),
    (50, "Reconstruction"),
    (60, "Production"),
    (70, "Production"),
    (80, "Production"),
    (90, "Finalizing"),
]
"""Every (percentage, step) an active job shows, in order; it ends at 100 % in Finalizing."""
OVER_COMPLETE = {"percentage": 100, "state": "Over", "step": "Finalizing"}
JOB_FAILURE = {
    "code": "ProcessingFailed",
    "title": "Processing failed",
    "message": "The job failed (simulated failure).",
    "params": [],
}
JOB_NOT_FOUND = {"error": {"code": "JobNotFound", "message": "Requested job is not available."}}
CANNOT_SUBMIT = {
    "error": {"code": "JobNotModifiable", "message": "Only an unsubmitted job can be submitted."}
}
CANNOT_CANCEL = {
    "error": {
        "code": "JobNotModifiable",
        "message": "Only an unsubmitted or active job can be cancelled.",
    }
}
INVALID_STATE = {
    "error": {
        "code": "InvalidContextCaptureRequest",
        "message": "Cannot update job.",
        "details": [
            {"code": "InvalidParameter", "message": "Invalid 'state' parameter.", "target": "state"}
        ],
    }
}
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


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
    return auth_headers(request_token(http, sim).json()["access_token"])


@pytest.fixture
def job(http: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    """A new job as its creation answered, from the page's example body."""
    workspace = create_workspace(http, headers, iTwinId=ITWIN_ID)
    response = http.post("/contextcapture/jobs", json=job_body(workspace["id"]), headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()["job"]
    return created


def patch_state(
    http: httpx.Client, headers: dict[str, str], job_id: str, state: Any
) -> httpx.Response:
    return http.patch(f"/contextcapture/jobs/{job_id}", json={"state": state}, headers=headers)


def set_state(
    http: httpx.Client, headers: dict[str, str], job_id: str, state: str
) -> dict[str, Any]:
    response = patch_state(http, headers, job_id, state)
    assert response.status_code == 200, response.text
    updated: dict[str, Any] = response.json()["job"]
    return updated


def get_job(http: httpx.Client, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = http.get(f"/contextcapture/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()["job"]
    return found


def progress(http: httpx.Client, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = http.get(f"/contextcapture/jobs/{job_id}/progress", headers=headers)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"jobProgress"}
    current: dict[str, Any] = response.json()["jobProgress"]
    return current


def poll_until_over(
    http: httpx.Client, headers: dict[str, str], job_id: str
) -> list[tuple[float, dict[str, Any]]]:
    """Every progress answer with the monotonic time its request was sent, the last one Over."""
    polls: list[tuple[float, dict[str, Any]]] = []
    deadline = time.monotonic() + 5
    while not polls or polls[-1][1]["state"] != "Over":
        assert time.monotonic() < deadline, polls[-1]
        polls.append((time.monotonic(), progress(http, headers, job_id)))
        time.sleep(0.01)
    return polls


def wall(value: str) -> datetime:
    return datetime.fromisoformat(value)


def later(value: str, seconds: float) -> str:
    """A timestamp as the API writes it, `seconds` after another."""
    moment = wall(value) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def without_changes(job: dict[str, Any]) -> dict[str, Any]:
    """The fields no transition changes."""
    changing = {"state", "lastModifiedDateTime", "executionInformation"}
    return {key: value for key, value in job.items() if key not in changing}


# --- the lifecycle in simulated time -----------------------------------------------------------


def test_progress_table_over_a_run() -> None:
    lifecycle = Lifecycle()
    lifecycle.submit(Instant(100.0, datetime(2024, 1, 1, tzinfo=UTC)), 10.0, "success")

    seen = [lifecycle.progress(100.0 + elapsed).to_json() for elapsed in (0, 0.999, 9.999, 10)]
    table = [lifecycle.progress(100.0 + tenth + 0.5).to_json() for tenth in range(10)]

    assert seen == [
        {"percentage": 0, "state": "Active", "step": "Preparing"},
        {"percentage": 0, "state": "Active", "step": "Preparing"},
        {"percentage": 90, "state": "Active", "step": "Finalizing"},
        OVER_COMPLETE,
    ]
    assert [(p["percentage"], p["step"]) for p in table] == PROGRESS_TABLE
    assert {p["state"] for p in table} == {"Active"}
    assert lifecycle.state(109.999) == "active"
    assert lifecycle.state(110.0) == "success"


def test_execution_times_follow_the_run() -> None:
    submitted = datetime(2024, 1, 1, tzinfo=UTC)
    lifecycle = Lifecycle()
    assert lifecycle.execution(0.0) is None
    lifecycle.submit(Instant(0.0, submitted), 10.0, "failed")

    queued, running, over = (lifecycle.execution(t) for t in (0.999, 1.0, 10.0))

    assert queued is not None
    assert running is not None
    assert over is not None
    assert (queued.submitted, queued.started, queued.ended) == (submitted, None, None)
    assert running.started == submitted + timedelta(seconds=1)
    assert running.ended is None
    assert over.ended == submitted + timedelta(seconds=10)
    assert lifecycle.state(10.0) == "failed"


def test_cancelled_run_freezes_where_it_was() -> None:
    submitted = datetime(2024, 1, 1, tzinfo=UTC)
    lifecycle = Lifecycle()
    lifecycle.submit(Instant(0.0, submitted), 10.0, "success")
    lifecycle.cancel(Instant(4.5, submitted + timedelta(seconds=4.5)))

    execution = lifecycle.execution(60.0)

    assert lifecycle.state(60.0) == "cancelled"
    assert lifecycle.progress(60.0).to_json() == {
        "percentage": 40,
        "state": "Over",
        "step": "Reconstruction",
    }
    assert execution is not None
    assert execution.ended == submitted + timedelta(seconds=4.5)


# --- GET job and progress ---------------------------------------------------------------------


def test_new_job_is_unsubmitted(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any]
) -> None:
    assert get_job(http, headers, job["id"]) == job
    assert progress(http, headers, job["id"]) == UNSUBMITTED


@pytest.mark.parametrize("suffix", ["", "/progress"])
def test_unknown_job_is_not_found(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any], suffix: str
) -> None:
    for job_id in (UNKNOWN_ID, job["id"].upper()):
        response = http.get(f"/contextcapture/jobs/{job_id}{suffix}", headers=headers)

        assert response.status_code == 404
        assert response.json() == JOB_NOT_FOUND


# --- submit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["active", "Active", "ACTIVE"])
def test_submit_makes_the_job_active(
    http: httpx.Client,
    sim: SimulatorHandle,
    headers: dict[str, str],
    job: dict[str, Any],
    spelling: str,
) -> None:
    sim.configure(**LONG_JOB)

    submitted = set_state(http, headers, job["id"], spelling)

    submitted_at = submitted["executionInformation"]["submittedDateTime"]
    assert TIMESTAMP.match(submitted_at)
    assert wall(submitted_at) >= wall(job["createdDateTime"])
    assert submitted == job | {
        "state": "active",
        "lastModifiedDateTime": submitted_at,
        "executionInformation": {
            "submittedDateTime": submitted_at,
            "estimatedUnits": ESTIMATED_COST,
        },
    }
    assert list(submitted).index("executionInformation") == list(submitted).index("inputs") - 1
    assert get_job(http, headers, job["id"]) == submitted
    assert progress(http, headers, job["id"]) == {
        "percentage": 0,
        "state": "Active",
        "step": "Preparing",
    }


def test_job_without_cost_parameters_has_no_estimated_units(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    workspace = create_workspace(http, headers)
    body = job_body(workspace["id"])
    del body["costEstimationParameters"]
    created = http.post("/contextcapture/jobs", json=body, headers=headers).json()["job"]

    submitted = set_state(http, headers, created["id"], "active")

    assert submitted["executionInformation"]["estimatedUnits"] is None


def test_job_runs_through_the_steps_to_success(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    sim.configure(**ONE_SECOND_JOB)
    before_submit = time.monotonic()
    submitted = set_state(http, headers, job["id"], "active")
    after_submit = time.monotonic()

    polls = poll_until_over(http, headers, job["id"])

    *running, (over_sent, over) = polls
    assert over == OVER_COMPLETE
    assert {p["state"] for _, p in running} == {"Active"}
    percentages = [p["percentage"] for _, p in polls]
    assert percentages == sorted(percentages)
    distinct = list(dict.fromkeys((p["percentage"], p["step"]) for _, p in running))
    assert distinct == [entry for entry in PROGRESS_TABLE if entry in distinct]
    assert distinct[0] == (0, "Preparing")
    steps = list(dict.fromkeys(step for _, step in distinct))
    assert steps == ["Preparing", "Calibration", "Reconstruction", "Production", "Finalizing"]
    assert running[-1][0] < after_submit + 1.0
    assert over_sent >= before_submit + 0.99

    finished = get_job(http, headers, job["id"])
    submitted_at = submitted["executionInformation"]["submittedDateTime"]
    assert finished == submitted | {
        "state": "success",
        "lastModifiedDateTime": later(submitted_at, 1.0),
        "executionInformation": {
            "submittedDateTime": submitted_at,
            "startedDateTime": later(submitted_at, 0.1),
            "endedDateTime": later(submitted_at, 1.0),
            "estimatedUnits": ESTIMATED_COST,
        },
    }


def test_polls_are_in_the_request_log(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    sim.configure(job_duration_seconds=1, time_scale=0.1)
    sim.clear_requests()
    set_state(http, headers, job["id"], "active")

    polls = poll_until_over(http, headers, job["id"])

    path = f"/contextcapture/jobs/{job['id']}"
    log = sim.requests()
    assert [(r.method, r.path, r.status) for r in log] == [("PATCH", path, 200)] + [
        ("GET", f"{path}/progress", 200)
    ] * len(polls)
    assert [r.t for r in log] == sorted(r.t for r in log)


def test_submit_twice_conflicts(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    sim.configure(**LONG_JOB)
    submitted = set_state(http, headers, job["id"], "active")

    response = patch_state(http, headers, job["id"], "active")

    assert response.status_code == 409
    assert response.json() == CANNOT_SUBMIT
    assert get_job(http, headers, job["id"]) == submitted


def test_config_changes_leave_a_running_job_alone(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    sim.configure(job_duration_seconds=1, time_scale=0.1)
    set_state(http, headers, job["id"], "active")

    sim.configure(**LONG_JOB, job_outcome="failed")
    time.sleep(0.15)

    assert get_job(http, headers, job["id"])["state"] == "success"


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_an_unsubmitted_job(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any]
) -> None:
    cancelled = set_state(http, headers, job["id"], "Cancelled")

    assert TIMESTAMP.match(cancelled["lastModifiedDateTime"])
    assert cancelled == job | {
        "state": "cancelled",
        "lastModifiedDateTime": cancelled["lastModifiedDateTime"],
    }
    assert progress(http, headers, job["id"]) == {"percentage": 0, "state": "Over", "step": ""}
    response = patch_state(http, headers, job["id"], "active")
    assert response.status_code == 409
    assert response.json() == CANNOT_SUBMIT


def test_cancel_a_queued_job(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    sim.configure(**LONG_JOB)
    submitted = set_state(http, headers, job["id"], "active")

    cancelled = set_state(http, headers, job["id"], "cancelled")

    ended_at = cancelled["executionInformation"]["endedDateTime"]
    assert cancelled == submitted | {
        "state": "cancelled",
        "lastModifiedDateTime": ended_at,
        "executionInformation": submitted["executionInformation"] | {"endedDateTime": ended_at},
    }
    assert wall(ended_at) >= wall(submitted["lastModifiedDateTime"])
    assert progress(http, headers, job["id"]) == {
        "percentage": 0,
        "state": "Over",
        "step": "Preparing",
    }


def test_cancelled_job_stops_where_it_was(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    sim.configure(**ONE_SECOND_JOB)
    set_state(http, headers, job["id"], "active")
    time.sleep(0.25)

    cancelled = set_state(http, headers, job["id"], "cancelled")
    at_cancel = progress(http, headers, job["id"])
    time.sleep(0.8)  # past the end the run would have had

    assert progress(http, headers, job["id"]) == at_cancel
    assert at_cancel["state"] == "Over"
    assert (at_cancel["percentage"], at_cancel["step"]) in PROGRESS_TABLE[2:]
    assert get_job(http, headers, job["id"]) == cancelled
    assert set(cancelled["executionInformation"]) == {
        "submittedDateTime",
        "startedDateTime",
        "endedDateTime",
        "estimatedUnits",
    }


def test_cancel_a_job_that_is_over_conflicts(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    sim.configure(job_duration_seconds=1, time_scale=0.01)
    set_state(http, headers, job["id"], "active")
    time.sleep(0.05)
    finished = get_job(http, headers, job["id"])

    for _ in range(2):
        response = patch_state(http, headers, job["id"], "cancelled")

        assert response.status_code == 409
        assert response.json() == CANNOT_CANCEL
    assert get_job(http, headers, job["id"]) == finished
    assert finished["state"] == "success"


# --- failures on demand -----------------------------------------------------------------------


def assert_failed(http: httpx.Client, headers: dict[str, str], job_id: str) -> None:
    failed = get_job(http, headers, job_id)
    assert failed["state"] == "failed"
    assert failed["executionInformation"]["errors"] == [JOB_FAILURE]
    assert set(failed["executionInformation"]) == {
        "submittedDateTime",
        "startedDateTime",
        "endedDateTime",
        "estimatedUnits",
        "errors",
    }
    assert progress(http, headers, job_id) == OVER_COMPLETE


def test_config_can_fail_every_job(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    sim.configure(job_duration_seconds=1, time_scale=0.1, job_outcome="failed")
    submitted = set_state(http, headers, job["id"], "active")

    assert submitted["state"] == "active"
    assert "errors" not in submitted["executionInformation"]
    time.sleep(0.15)
    assert_failed(http, headers, job["id"])


@pytest.mark.parametrize("before_submit", [True, False])
def test_admin_can_fail_one_job(
    http: httpx.Client,
    sim: SimulatorHandle,
    headers: dict[str, str],
    job: dict[str, Any],
    before_submit: bool,
) -> None:
    sim.configure(job_duration_seconds=1, time_scale=0.1)
    workspace_id = job["workspaceId"]
    other = http.post("/contextcapture/jobs", json=job_body(workspace_id), headers=headers)

    if before_submit:
        sim.set_job_outcome(job["id"], "failed")
    for job_id in (job["id"], other.json()["job"]["id"]):
        set_state(http, headers, job_id, "active")
    if not before_submit:
        sim.set_job_outcome(job["id"], "failed")
    time.sleep(0.15)

    assert_failed(http, headers, job["id"])
    assert get_job(http, headers, other.json()["job"]["id"])["state"] == "success"


def test_admin_can_rescue_one_job_from_a_failing_config(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    sim.configure(job_duration_seconds=1, time_scale=0.1, job_outcome="failed")
    set_state(http, headers, job["id"], "active")

    sim.set_job_outcome(job["id"], "success")
    time.sleep(0.15)

    finished = get_job(http, headers, job["id"])
    assert finished["state"] == "success"
    assert "errors" not in finished["executionInformation"]


def test_admin_outcome_answers(
    http: httpx.Client, sim: SimulatorHandle, headers: dict[str, str], job: dict[str, Any]
) -> None:
    url = f"{sim.base_url}/_simulator/jobs/{job['id']}/outcome"

    changed = httpx.post(url, json={"outcome": "failed"})
    unknown = httpx.post(
        f"{sim.base_url}/_simulator/jobs/{UNKNOWN_ID}/outcome", json={"outcome": "failed"}
    )
    invalid = httpx.post(url, json={"outcome": "cancelled"})
    set_state(http, headers, job["id"], "cancelled")
    settled = httpx.post(url, json={"outcome": "success"})

    assert changed.status_code == 200
    assert changed.json() == {"job": job}
    assert unknown.status_code == 404
    assert unknown.json() == JOB_NOT_FOUND
    assert invalid.status_code == 422
    assert invalid.json()["error"]["code"] == "InvalidSimulatorRequest"
    assert invalid.json()["error"]["details"][0]["target"] == "outcome"
    assert settled.status_code == 409
    assert settled.json() == {
        "error": {
            "code": "JobNotModifiable",
            "message": "The job is over: its outcome cannot change.",
        }
    }
    # Admin calls are not logged: only the workspace, the job and the cancellation are.
    assert [r.method for r in sim.requests()] == ["POST", "POST", "PATCH"]


# --- PATCH errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"state": "unsubmitted"},
        {"state": "success"},
        {"state": "failed"},
        {"state": "activ"},
        {"state": " active"},
        {"state": ""},
        {"state": None},
        {"state": 1},
        {"state": ["active"]},
        {},
        {"settings": None},
    ],
)
def test_update_with_bad_state(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any], body: dict[str, Any]
) -> None:
    for job_id in (job["id"], UNKNOWN_ID):
        response = http.patch(f"/contextcapture/jobs/{job_id}", json=body, headers=headers)

        assert response.status_code == 422
        assert response.json() == INVALID_STATE
    assert get_job(http, headers, job["id"]) == job


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", b'"active"'])
def test_update_with_a_body_that_is_not_an_object(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any], content: bytes
) -> None:
    response = http.patch(f"/contextcapture/jobs/{job['id']}", content=content, headers=headers)

    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "InvalidContextCaptureRequest",
            "message": "Cannot update job.",
            "details": [
                {"code": "InvalidParameter", "message": "The request body must be a JSON object."}
            ],
        }
    }


@pytest.mark.parametrize("state", ["active", "cancelled"])
def test_update_unknown_job(http: httpx.Client, headers: dict[str, str], state: str) -> None:
    response = patch_state(http, headers, UNKNOWN_ID, state)

    assert response.status_code == 404
    assert response.json() == JOB_NOT_FOUND


# --- rules shared with every endpoint ---------------------------------------------------------

JOB_ENDPOINTS = [
    ("GET", "", None, RATE_LIMIT_EXCEEDED),
    ("PATCH", "", {"state": "active"}, TOO_MANY_REQUESTS),
    ("GET", "/progress", None, RATE_LIMIT_EXCEEDED),
]
JOB_ENDPOINT_IDS = ["get-job", "update-job", "get-progress"]


@pytest.mark.parametrize(
    ("method", "suffix", "body", "throttled"), JOB_ENDPOINTS, ids=JOB_ENDPOINT_IDS
)
def test_job_endpoints_throttle_with_their_pages_wording(
    http: httpx.Client,
    sim: SimulatorHandle,
    headers: dict[str, str],
    job: dict[str, Any],
    method: str,
    suffix: str,
    body: Any,
    throttled: dict[str, Any],
) -> None:
    sim.configure(rate_limit_per_second=1, rate_limit_burst=1)  # a new, full bucket
    path = f"/contextcapture/jobs/{job['id']}{suffix}"
    assert http.request(method, path, json=body, headers=headers).status_code == 200

    assert_throttled(http.request(method, path, json=body, headers=headers), throttled, 1)


@pytest.mark.parametrize(
    ("method", "suffix", "body", "throttled"), JOB_ENDPOINTS, ids=JOB_ENDPOINT_IDS
)
def test_job_endpoints_need_a_token_and_see_injected_errors(
    http: httpx.Client,
    sim: SimulatorHandle,
    job: dict[str, Any],
    method: str,
    suffix: str,
    body: Any,
    throttled: dict[str, Any],
) -> None:
    path = f"/contextcapture/jobs/{job['id']}{suffix}"

    unauthenticated = http.request(method, path, json=body)
    sim.configure(error_rate=1.0)
    faulted = http.request(method, path, json=body)

    assert unauthenticated.status_code == 401
    assert unauthenticated.json() == MISSING_AUTHORIZATION
    assert faulted.status_code in (500, 503)
    assert [(r.method, r.path, r.status) for r in sim.requests()[-2:]] == [
        (method, path, 401),
        (method, path, faulted.status_code),
    ]


def test_job_path_lists_its_methods_when_refusing_one(
    http: httpx.Client, headers: dict[str, str], job: dict[str, Any]
) -> None:
    response = http.put(f"/contextcapture/jobs/{job['id']}", json={}, headers=headers)

    assert response.status_code == 405
    assert sorted(response.headers["allow"].split(", ")) == ["DELETE", "GET", "HEAD", "PATCH"]
    assert response.json()["error"]["code"] == "MethodNotAllowed"


# --- config and CLI ---------------------------------------------------------------------------


def test_job_knobs_are_in_the_config(sim: SimulatorHandle) -> None:
    defaults = sim.configure()
    changed = sim.configure(job_duration_seconds=5, time_scale=0.5, job_outcome="failed")
    refused = httpx.patch(f"{sim.base_url}/_simulator/config", json={"time_scale": 0})

    assert (
        defaults["job_duration_seconds"],
        defaults["time_scale"],
        defaults["job_outcome"],
    ) == (60.0, 1.0, "success")
    assert (
        changed["job_duration_seconds"],
        changed["time_scale"],
        changed["job_outcome"],
    ) == (5.0, 0.5, "failed")
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["target"] == "time_scale"
    sim.reset()
    assert sim.configure()["job_outcome"] == "success"


def test_cli_sets_the_job_knobs() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    config = config_from_args(
        parser.parse_args(
            ["--job-duration", "30", "--time-scale", "0.01", "--job-outcome", "failed"]
        )
    )

    assert (config.job_duration_seconds, config.time_scale, config.job_outcome) == (
        30.0,
        0.01,
        "failed",
    )
    with pytest.raises(ValueError, match="--time-scale"):
        config_from_args(parser.parse_args(["--time-scale", "0"]))
    with pytest.raises(ValueError, match="--job-outcome"):
        config_from_args(parser.parse_args(["--job-outcome", "maybe"]))
