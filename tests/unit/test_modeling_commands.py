"""Reality Modeling v2 commands: validation by type, the requests they become (Accept, paths,
the `$filter` the worker writes), their results, and what a lost answer may repeat."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest

from service.commands import BY_ROUTING_KEY, COMMANDS, UnexpectedAnswer
from service.errors import ApiError, InvalidCommand
from service.job_kinds import (
    ACCEPT_V1,
    ACCEPT_V2,
    JOB_KINDS,
    MODELING_JOB_STATES,
    MODELING_JOBS,
    JobKindName,
)
from service.messages import Command
from service.modeling import CreateReconstruction, ModelingJobState, quoted

ITWIN = "60805594-3e04-43b5-8fd8-5ccae0de23cc"
JOB = "5f0c3a51-0d3c-4a43-a0a5-3c6a3e7d9b10"
RECONSTRUCTION: dict[str, Any] = {
    "type": "Reconstruction",
    "name": "Mesh of the bridge",
    "iTwinId": ITWIN,
    "specifications": {
        "inputs": {"scene": "s1", "regionOfInterest": "bkt:roi.json", "newInput": [1, None]},
        "outputs": {"modelingReference": True, "exports": [{"format": "OBJ", "x": {"y": 1}}]},
        "options": {"tilingMode": "Adaptive", "untexturedColor": "#FF00FF"},
    },
}


def parse(routing_key: str, document: Any) -> Command:
    return BY_ROUTING_KEY[routing_key].parse(json.dumps(document).encode())


def refusal(routing_key: str, document: Any) -> list[dict[str, Any]]:
    with pytest.raises(InvalidCommand) as caught:
        parse(routing_key, document)
    return caught.value.details


def test_every_command_speaks_to_one_api_generation_by_its_accept() -> None:
    for spec in COMMANDS:
        expected = ACCEPT_V2 if spec.routing_key.startswith("modeling.") else ACCEPT_V1
        assert spec.accept == expected, spec.routing_key
    request = BY_ROUTING_KEY["modeling.job.get"].request(parse("modeling.job.get", {"jobId": JOB}))
    assert (request.method, request.path, request.accept) == (
        "GET", f"/reality-modeling/jobs/{JOB}", ACCEPT_V2,
    )  # fmt: skip
    workspace = BY_ROUTING_KEY["workspace.get"].request(
        parse("workspace.get", {"workspaceId": "w"})
    )
    assert workspace.accept == ACCEPT_V1


def test_a_creation_body_is_forwarded_unchanged_by_its_types_model() -> None:
    spec = BY_ROUTING_KEY["modeling.job.create"]
    command = parse("modeling.job.create", RECONSTRUCTION)
    assert isinstance(command, CreateReconstruction)
    request = spec.request(command)
    assert (request.method, request.path, request.accept) == (
        "POST", "/reality-modeling/jobs", ACCEPT_V2,
    )  # fmt: skip
    assert request.json == RECONSTRUCTION
    assert not request.safe_to_repeat, "a POST leaves at most once"


@pytest.mark.parametrize(
    ("change", "target", "code"),
    [
        ({"type": "Objects2D"}, "type", "InvalidValue"),
        ({"type": None}, "type", "InvalidValue"),
        ({"name": "ab"}, "name", "InvalidValue"),
        ({"iTwinId": "a/b"}, "iTwinId", "InvalidValue"),
        ({"specifications": None}, "specifications", "InvalidValue"),
        ({"extra": 1}, "extra", "UnknownProperty"),
    ],
)
def test_the_envelope_is_checked_for_every_type(
    change: dict[str, Any], target: str, code: str
) -> None:
    details = refusal("modeling.job.create", {**RECONSTRUCTION, **change})
    assert [(d["target"], d["code"]) for d in details] == [(target, code)]


def test_a_body_without_a_type_names_that_and_whatever_else_is_wrong() -> None:
    body = {"iTwinId": "bad id", "specifications": {"inputs": {}, "outputs": []}}
    details = refusal("modeling.job.create", body)
    assert {(d["target"], d["code"]) for d in details} == {
        ("type", "MissingRequiredProperty"),
        ("iTwinId", "InvalidValue"),
    }


@pytest.mark.parametrize(
    ("kind", "specifications", "targets"),
    [
        ("Reconstruction", {"inputs": {"extent": "roi.json"}, "outputs": {}},
         {"specifications.inputs.scene", "specifications.inputs.extent"}),
        ("Reconstruction", {"inputs": {"scene": "s"}, "outputs": {"exports": [{"format": "FBX"}]}},
         {"specifications.outputs.exports.0.format"}),
        ("Reconstruction", {"inputs": {"scene": "s"}, "outputs": {}, "options": {
            "geometricPrecision": "Low", "tilingValue": -2}},
         {"specifications.options.geometricPrecision", "specifications.options.tilingValue"}),
        ("Calibration", {"inputs": {"scene": "s", "crsData": "crs"}, "outputs": ["scene", "x"]},
         {"specifications.inputs.crsData", "specifications.outputs.1"}),
        ("Tiling", {"inputs": {"scene": "s"}, "outputs": {"modelingReference": True}},
         {"specifications.outputs"}),
        ("Production", {"inputs": {"scene": "s"}, "outputs": {"exports": []}},
         {"specifications.inputs.modelingReference"}),
        ("FillImageProperties", {"inputs": {"presets": []}, "outputs": ["scene"]},
         {"specifications.inputs"}),
        ("ImportPointCloud", {"inputs": {"scene": "s"}, "outputs": ["points"]},
         {"specifications.outputs.0"}),
        ("GaussianSplats", {"inputs": {"n": float("inf")}, "outputs": []},
         {"specifications.inputs.n"}),
    ],
)  # fmt: skip
def test_each_types_named_fields_are_checked(
    kind: str, specifications: dict[str, Any], targets: set[str]
) -> None:
    body = {"type": kind, "iTwinId": ITWIN, "specifications": specifications}
    details = refusal("modeling.job.create", body)
    assert {d["target"] for d in details} == targets, details


def test_types_whose_specifications_are_open_pass_them_through() -> None:
    body = {
        "type": "TouchUpExport",
        "iTwinId": ITWIN,
        "specifications": {"inputs": {"modelingReference": "m"}, "outputs": ["touchUpData"],
                           "options": {"level": "Medium"}, "future": True},
    }  # fmt: skip
    request = BY_ROUTING_KEY["modeling.job.create"].request(parse("modeling.job.create", body))
    assert request.json == body


def test_a_created_jobs_id_is_followed_only_when_it_is_a_safe_id() -> None:
    spec = BY_ROUTING_KEY["modeling.job.create"]
    command = parse("modeling.job.create", RECONSTRUCTION)
    job = {"id": JOB, "state": "Queued"}
    assert spec.result_of(command, {"job": job}) == job
    assert spec.follows is MODELING_JOBS
    assert spec.job_to_follow(command, job) == JOB
    for bad in ({"state": "Queued"}, {"id": "../x"}, {"id": 5}):
        with pytest.raises(UnexpectedAnswer):
            spec.result_of(command, {"job": bad})


def test_get_cancel_messages_and_follow_become_the_pages_calls() -> None:
    calls = {}
    for name in ("get", "cancel", "messages", "follow"):
        spec = BY_ROUTING_KEY[f"modeling.job.{name}"]
        request = spec.request(parse(spec.routing_key, {"jobId": JOB}))
        calls[name] = (request.method, request.path, request.accept, request.safe_to_repeat)
    base = f"/reality-modeling/jobs/{JOB}"
    assert calls == {
        "get": ("GET", base, ACCEPT_V2, True),
        "cancel": ("DELETE", base, ACCEPT_V2, True),
        "messages": ("GET", f"{base}/messages", ACCEPT_V2, True),
        "follow": ("GET", f"{base}/progress", ACCEPT_V2, True),
    }
    follow = BY_ROUTING_KEY["modeling.job.follow"]
    assert follow.job_to_follow(parse(follow.routing_key, {"jobId": JOB}), {}) == JOB


def test_messages_answer_with_the_job_id_and_the_apis_messages() -> None:
    spec = BY_ROUTING_KEY["modeling.job.messages"]
    command = parse(spec.routing_key, {"jobId": JOB})
    messages = {"errors": [{"code": "InputData_Invalid", "params": ["x"]}], "warnings": []}
    assert spec.result_of(command, {"messages": messages}) == {"jobId": JOB, **messages}
    assert spec.result_of(command, {"messages": {**messages, "jobId": "other"}})["jobId"] == JOB
    with pytest.raises(UnexpectedAnswer):
        spec.result_of(command, {"messages": []})


def test_list_criteria_become_a_filter_the_worker_writes() -> None:
    command = parse(
        "modeling.job.list",
        {
            "iTwinId": ITWIN,
            "state": "Active",
            "type": "Tiling",
            "name": "Bob's ' or 1 eq 1",
            "createdAfter": "2025-03-06T09:42:33Z",
            "createdBefore": "2026-01-01T00:00:00Z",
            "top": 2,
            "continuationToken": "a&b=c",
        },
    )
    request = BY_ROUTING_KEY["modeling.job.list"].request(command)
    assert (request.method, request.path, request.json, request.accept) == (
        "GET", "/reality-modeling/jobs", None, ACCEPT_V2,
    )  # fmt: skip
    assert request.query == (
        (
            "$filter",
            f"iTwinId eq {ITWIN} and state eq 'Active' and type eq 'Tiling' and "
            "name eq 'Bob''s '' or 1 eq 1' and createdDateTime gt 2025-03-06T09:42:33Z and "
            "createdDateTime lt 2026-01-01T00:00:00Z",
        ),
        ("$top", "2"),
        ("continuationToken", "a&b=c"),
    )


def test_a_list_needs_a_criterion_or_a_token_and_top_alone_is_neither() -> None:
    assert [d["code"] for d in refusal("modeling.job.list", {"top": 5})] == [
        "MissingRequiredProperty"
    ]
    token_only = BY_ROUTING_KEY["modeling.job.list"].request(
        parse("modeling.job.list", {"continuationToken": "t1"})
    )
    assert token_only.query == (("continuationToken", "t1"),)


@pytest.mark.parametrize(
    ("text", "literal"),
    [("plain", "'plain'"), ("it's", "'it''s'"), ("''", "''''''"), ("a' eq 'a", "'a'' eq ''a'")],
)
def test_quoted_strings_cannot_end_early(text: str, literal: str) -> None:
    assert quoted(text) == literal


def test_a_cancel_refused_after_more_than_one_attempt_is_checked_by_a_read() -> None:
    spec = BY_ROUTING_KEY["modeling.job.cancel"]
    command = parse(spec.routing_key, {"jobId": JOB})
    first_try = ApiError("not running", status=422, code="InvalidRealityModelingRequest")
    first_try.attempts = 1
    assert spec.confirmation(command, first_try) is None, "a first attempt's 422 is a refusal"
    repeated = ApiError("not running", status=422, code="InvalidRealityModelingRequest")
    repeated.attempts = 2
    check = spec.confirmation(command, repeated)
    assert check is not None
    assert (check.method, check.path, check.accept) == (
        "GET", f"/reality-modeling/jobs/{JOB}", ACCEPT_V2,
    )  # fmt: skip
    missing = ApiError("gone", status=404, code="JobNotFound")
    missing.attempts = 2
    assert spec.confirmation(command, missing) is None
    for state in ("TerminatingOnCancel", "Cancelled"):
        assert spec.confirmed({"job": {"id": JOB, "state": state}})
    for state in ("Success", "Failed", "TerminatingOnFailure", "Active"):
        assert not spec.confirmed({"job": {"id": JOB, "state": state}})
    assert not spec.confirmed({})
    assert BY_ROUTING_KEY["job.cancel"].confirmation(parse("job.cancel", {"jobId": "j"}),
                                                     repeated) is None  # fmt: skip


def test_the_kinds_and_their_names_agree() -> None:
    assert set(JOB_KINDS) == set(get_args(JobKindName))
    assert all(kind.name == name for name, kind in JOB_KINDS.items())
    assert set(MODELING_JOB_STATES) == set(get_args(ModelingJobState))
    assert set(MODELING_JOBS.terminal_events) == MODELING_JOBS.ended_states
