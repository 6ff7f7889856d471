"""Issue 19 acceptance: the rest of each resource's lifecycle, through a real RabbitMQ to the
simulator over a socket."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from service.producer import Producer
from service.simulator import FORBIDDEN_ITWIN_ID, SimulatorHandle
from tests.support import ITWIN, api_failure, drain_queue, request

UNKNOWN = "00000000-0000-4000-8000-000000000000"
TIMEOUT = 20


async def succeeds(producer: Producer, routing_key: str, document: Any, event: str) -> Any:
    answer = await request(producer, routing_key, document)
    assert answer["type"] == event, answer
    return answer["result"]


def api_calls(sim: SimulatorHandle) -> list[tuple[str, str, int | None]]:
    return [(r.method, r.path, r.status) for r in sim.requests(kind="api")]


async def new_workspace(producer: Producer) -> dict[str, Any]:
    workspace: dict[str, Any] = await succeeds(
        producer, "workspace.create", {"name": "w", "iTwinId": ITWIN}, "workspace.created"
    )
    return workspace


async def new_job(producer: Producer) -> dict[str, Any]:
    workspace = await new_workspace(producer)
    body = {
        "type": "Full",
        "name": "job",
        "workspaceId": workspace["id"],
        "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"}],
        "settings": {"quality": "Draft", "processingEngines": 2, "outputs": ["OBJ"]},
    }
    job: dict[str, Any] = await succeeds(producer, "job.create", body, "job.created")
    return job


async def new_repository(producer: Producer, uri: str | None = None) -> dict[str, Any]:
    body = {
        "iTwinId": ITWIN,
        "class": "GeographicInformationSystem",
        "subClass": "WebMapService",
        "uri": uri or f"https://maps.example.com/{uuid.uuid4()}",
    }
    repository: dict[str, Any] = await succeeds(
        producer, "repository.create", body, "repository.created"
    )
    return repository


async def new_application(producer: Producer, name: str = "Revit") -> dict[str, Any]:
    body = {"displayName": name, "version": "2019"}
    application: dict[str, Any] = await succeeds(
        producer, "application.create", body, "application.created"
    )
    return application


# --- workspaces ---------------------------------------------------------------------------------


async def test_workspace_delete_then_a_second_delete_is_the_apis_404(
    producer: Producer, sim: SimulatorHandle, amqp_url: str
) -> None:
    workspace = await new_workspace(producer)
    deleted = await request(producer, "workspace.delete", {"workspaceId": workspace["id"]})
    assert deleted["type"] == "workspace.deleted"
    assert (deleted["result"], deleted["attempts"]) == ({"workspaceId": workspace["id"]}, 1)
    error = await api_failure(
        producer, "workspace.delete", {"workspaceId": workspace["id"]}, 404, "WorkspaceNotFound"
    )
    assert error["message"] == "Requested workspace is not available."
    await api_failure(
        producer, "workspace.get", {"workspaceId": workspace["id"]}, 404, "WorkspaceNotFound"
    )
    dead = await drain_queue(amqp_url, "itwin-worker.dlq", quiet=0.5)
    assert deleted["commandId"] not in {m.message_id for m in dead}


async def test_a_delete_whose_first_answer_is_lost_ends_deleted(
    producer: Producer, sim: SimulatorHandle, amqp_url: str
) -> None:
    workspace = await new_workspace(producer)
    path = f"/contextcapture/workspaces/{workspace['id']}"
    sim.clear_requests()
    sim.drop_next(1)

    event = await request(producer, "workspace.delete", {"workspaceId": workspace["id"]})

    assert event["type"] == "workspace.deleted", event
    assert event["result"] == {"workspaceId": workspace["id"]}
    assert event["attempts"] == 2, "the lost attempt and the repeat that found it gone"
    assert api_calls(sim) == [("DELETE", path, None), ("DELETE", path, 404)]
    dead = await drain_queue(amqp_url, "itwin-worker.dlq", quiet=0.5)
    assert event["commandId"] not in {m.message_id for m in dead}


# --- jobs -------------------------------------------------------------------------------------


async def test_job_update_settings_and_cost(producer: Producer, sim: SimulatorHandle) -> None:
    job = await new_job(producer)
    body = {
        "jobId": job["id"],
        "settings": {"quality": "Extra", "processingEngines": 4.0},
        "costEstimationParameters": {"gigaPixels": 2, "megaPoints": 10, "meshQuality": "Draft"},
    }
    updated = await succeeds(producer, "job.update", body, "job.updated")

    assert (updated["id"], updated["state"]) == (job["id"], "unsubmitted")
    assert updated["jobSettings"]["quality"] == "Extra"
    assert updated["jobSettings"]["processingEngines"] == 4
    assert updated["estimatedCost"] == 0.5 * (2 + 0.1 * 10)
    assert api_calls(sim)[-1][:2] == ("PATCH", f"/contextcapture/jobs/{job['id']}")


async def test_job_update_errors(producer: Producer) -> None:
    await api_failure(
        producer, "job.update", {"jobId": UNKNOWN, "settings": {"quality": "Draft"}},
        404, "JobNotFound",
    )  # fmt: skip
    job = await new_job(producer)
    await api_failure(
        producer, "job.update", {"jobId": job["id"], "settings": {"processingEngines": 21}},
        422, "InvalidContextCaptureRequest",
        [{"code": "InvalidParameter", "message": "Invalid 'settings.processingEngines' parameter.",
          "target": "settings.processingEngines"}],
    )  # fmt: skip
    await succeeds(producer, "job.submit", {"jobId": job["id"]}, "job.submitted")
    await api_failure(
        producer, "job.update", {"jobId": job["id"], "settings": {"quality": "Extra"}},
        422, "InvalidContextCaptureRequest",
        [{"code": "InvalidChange", "message": "Cannot change an already submitted job.",
          "target": None}],
    )  # fmt: skip


async def test_a_field_setting_patch_is_repeated_after_a_lost_answer(
    producer: Producer, sim: SimulatorHandle
) -> None:
    job = await new_job(producer)
    sim.drop_next(1)
    event = await request(
        producer, "job.update", {"jobId": job["id"], "settings": {"quality": "Extra"}}
    )
    assert (event["type"], event["attempts"]) == ("job.updated", 2)
    assert event["result"]["jobSettings"]["quality"] == "Extra"


async def test_a_state_patch_is_not_repeated_after_a_lost_answer(
    producer: Producer, sim: SimulatorHandle
) -> None:
    job = await new_job(producer)
    sim.drop_next(1)
    event = await request(producer, "job.submit", {"jobId": job["id"]})
    assert event["type"] == "job.submit.failed"
    assert (event["error"]["code"], event["attempts"]) == ("OutcomeUnknown", 1)


async def test_job_delete_unsubmitted_and_submitted(producer: Producer) -> None:
    job = await new_job(producer)
    deleted = await succeeds(producer, "job.delete", {"jobId": job["id"]}, "job.deleted")
    assert deleted == {"jobId": job["id"]}
    await api_failure(producer, "job.get", {"jobId": job["id"]}, 404, "JobNotFound")
    await api_failure(producer, "job.delete", {"jobId": job["id"]}, 404, "JobNotFound")

    submitted = await new_job(producer)
    await succeeds(producer, "job.submit", {"jobId": submitted["id"]}, "job.submitted")
    error = await api_failure(
        producer, "job.delete", {"jobId": submitted["id"]}, 422, "InvalidContextCaptureRequest",
        [{"code": "InvalidChange", "message": "Cannot delete an already submitted job.",
          "target": None}],
    )  # fmt: skip
    assert error["message"] == "Cannot delete job."


async def test_engines_get(producer: Producer, sim: SimulatorHandle) -> None:
    sim.configure(engine_limit=12)
    assert await succeeds(producer, "engines.get", {}, "engines.retrieved") == {"maxEngines": 12}
    limit = await succeeds(producer, "engines.get", {"iTwinId": ITWIN}, "engines.retrieved")
    assert limit == {"maxEngines": 12}
    error = await api_failure(producer, "engines.get", {"iTwinId": UNKNOWN}, 404, "iTwinNotFound")
    assert error["message"] == "Requested iTwin is not available."


# --- repositories -----------------------------------------------------------------------------


async def test_repository_list_get_update_delete(producer: Producer, sim: SimulatorHandle) -> None:
    first = await new_repository(producer)
    second = await new_repository(producer)
    listed = await succeeds(producer, "repository.list", {"iTwinId": ITWIN}, "repository.listed")
    assert listed == {"repositories": [first, second]}
    by_class = {"iTwinId": ITWIN, "class": "Construction", "subClass": "Performance"}
    assert await succeeds(producer, "repository.list", by_class, "repository.listed") == {
        "repositories": []
    }
    ref = {"iTwinId": ITWIN, "repositoryId": first["id"]}
    assert await succeeds(producer, "repository.get", ref, "repository.retrieved") == first

    authentication = {"type": "Header", "key": "X-Api-Key", "value": "k"}
    changes = {"displayName": "Maps", "authentication": authentication, "options": None}
    updated = await succeeds(
        producer, "repository.update", {**ref, **changes}, "repository.updated"
    )
    assert updated == {**first, "displayName": "Maps", "authentication": authentication}
    removed = await succeeds(
        producer, "repository.update", {**ref, "authentication": None}, "repository.updated"
    )
    assert "authentication" not in removed

    deleted = await succeeds(producer, "repository.delete", ref, "repository.deleted")
    assert deleted == {"iTwinId": ITWIN, "repositoryId": first["id"]}
    listed = await succeeds(producer, "repository.list", {"iTwinId": ITWIN}, "repository.listed")
    assert listed == {"repositories": [second]}
    paths = [path for method, path, _ in api_calls(sim) if method == "GET"]
    assert f"/itwins/{ITWIN}/repositories" in paths


async def test_repository_errors(producer: Producer) -> None:
    await api_failure(producer, "repository.list", {"iTwinId": UNKNOWN}, 404, "iTwinNotFound")
    error = await api_failure(
        producer, "repository.list",
        {"iTwinId": ITWIN, "class": "Construction", "subClass": "WebMapService"},
        422, "InvalidiTwinsRequest",
        [{"code": "InvalidValue", "message": "SubClass value is incorrect.", "target": "subClass"}],
    )  # fmt: skip
    assert error["message"] == "Cannot query iTwin Repositories."
    missing = {"iTwinId": ITWIN, "repositoryId": UNKNOWN}
    for routing_key, extra in (
        ("repository.get", {}), ("repository.update", {"displayName": "x"}),
        ("repository.delete", {}),
    ):  # fmt: skip
        error = await api_failure(
            producer, routing_key, {**missing, **extra}, 404, "iTwinRepositoryNotFound"
        )
        assert error["message"] == "Requested iTwin Repository is not available."
    taken = await new_repository(producer)
    repository = await new_repository(producer)
    ref = {"iTwinId": ITWIN, "repositoryId": repository["id"]}
    await api_failure(
        producer, "repository.update", {**ref, "uri": taken["uri"]}, 409, "iTwinRepositoryExists"
    )
    await api_failure(
        producer, "repository.delete", {"iTwinId": FORBIDDEN_ITWIN_ID, "repositoryId": UNKNOWN},
        403, "InsufficientPermissions",
    )  # fmt: skip


# --- applications -----------------------------------------------------------------------------


def _simulator_client(sim: SimulatorHandle) -> httpx.Client:
    """Straight to the simulator: setting up 120 applications needs no worker."""
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "scope": "itwin-platform",
    }
    token = httpx.post(sim.token_url, data=form).json()["access_token"]
    return httpx.Client(
        base_url=sim.base_url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )


async def test_application_list_follows_tokens_over_three_pages(
    producer: Producer, sim: SimulatorHandle
) -> None:
    with _simulator_client(sim) as client:
        made = []
        for i in range(120):
            response = client.post(
                "/library/applications", json={"displayName": f"app {i}", "version": "1"}
            )
            made.append(response.json()["application"]["id"])
    sim.clear_requests()

    pages: list[dict[str, Any]] = []
    body: dict[str, Any] = {}
    while True:
        page = await succeeds(producer, "application.list", body, "application.listed")
        pages.append(page)
        if page["continuationToken"] is None:
            break
        body = {"continuationToken": page["continuationToken"]}
        assert len(pages) < 5, "the pages never end"

    assert [len(page["applications"]) for page in pages] == [50, 50, 20]
    assert [app["id"] for page in pages for app in page["applications"]] == made
    assert set(pages[0]) == {"applications", "continuationToken"}
    assert [method for method, _, _ in api_calls(sim)] == ["GET"] * 3


async def test_application_list_refuses_a_token_it_never_gave(producer: Producer) -> None:
    error = await api_failure(
        producer, "application.list", {"continuationToken": "a&continuationToken=b c/%"},
        422, "InvalidApplicationsRequest",
    )  # fmt: skip
    assert error["details"][0]["target"] == "continuationToken"


async def test_application_get_update_delete(producer: Producer, sim: SimulatorHandle) -> None:
    application = await new_application(producer)
    ref = {"applicationId": application["id"]}
    assert await succeeds(producer, "application.get", ref, "application.retrieved") == application
    replaced = await succeeds(
        producer, "application.update", {**ref, "displayName": "Revit", "version": "2024"},
        "application.updated",
    )  # fmt: skip
    assert (replaced["id"], replaced["version"]) == (application["id"], "2024")

    other = await new_application(producer, "MicroStation")
    await api_failure(
        producer, "application.update",
        {"applicationId": other["id"], "displayName": "Revit", "version": "2024"},
        409, "ApplicationExists",
    )  # fmt: skip
    deleted = await succeeds(producer, "application.delete", ref, "application.deleted")
    assert deleted == ref
    for routing_key, extra in (
        ("application.get", {}),
        ("application.update", {"displayName": "a", "version": "b"}),
        ("application.delete", {}),
    ):
        error = await api_failure(
            producer, routing_key, {**ref, **extra}, 404, "ApplicationNotFound"
        )
        assert error["message"] == "Requested Application is not available."

    sim.configure(library_forbidden=True)
    ref = {"applicationId": other["id"]}
    await api_failure(producer, "application.delete", ref, 403, "InsufficientPermissions")
    await api_failure(
        producer, "application.update", {**ref, "displayName": "x", "version": "y"},
        403, "InsufficientPermissions",
    )  # fmt: skip


# --- invalid bodies never reach the API ---------------------------------------------------------


@pytest.mark.parametrize(
    ("routing_key", "document", "target"),
    [
        ("workspace.delete", {}, "workspaceId"),
        ("workspace.delete", {"workspaceId": "../jobs/x"}, "workspaceId"),
        ("job.update", {"jobId": "j1"}, None),
        ("job.update", {"jobId": "j1", "settings": {"quality": "Ultra"}}, "settings.quality"),
        ("job.update", {"jobId": "j1", "state": "active"}, "state"),
        ("job.delete", {"jobId": "a/b"}, "jobId"),
        ("engines.get", {"iTwinId": "x&iTwinId=y"}, "iTwinId"),
        ("repository.list", {"iTwinId": ITWIN, "class": "Models"}, "class"),
        ("repository.list", {"iTwinId": ITWIN, "subClass": "MapServer"}, None),
        ("repository.get", {"iTwinId": ITWIN}, "repositoryId"),
        ("repository.update", {"iTwinId": ITWIN, "repositoryId": "r", "uri": None}, "uri"),
        ("repository.update", {"iTwinId": ITWIN, "repositoryId": "r", "class": "Forms"}, "class"),
        ("repository.delete", {"iTwinId": "a b", "repositoryId": "r"}, "iTwinId"),
        ("application.list", {"continuationToken": "t" * 2049}, "continuationToken"),
        ("application.list", {"continuationToken": "a\nb"}, "continuationToken"),
        ("application.get", {"applicationId": ""}, "applicationId"),
        ("application.update", {"applicationId": "a", "displayName": "Re>vit", "version": "1"},
         "displayName"),
        ("application.update", {"applicationId": "a", "displayName": "a\n||b", "version": "1"},
         "displayName"),
        ("application.update", {"applicationId": "a", "displayName": "Revit"}, "version"),
        ("application.delete", {"applicationId": "x?y"}, "applicationId"),
    ],
)  # fmt: skip
async def test_invalid_bodies_are_invalid_commands_with_no_api_call(
    producer: Producer,
    sim: SimulatorHandle,
    routing_key: str,
    document: dict[str, Any],
    target: str | None,
) -> None:
    event = await request(producer, routing_key, document)
    assert event["type"] == f"{routing_key}.failed"
    error = event["error"]
    assert (error["status"], error["code"], event["attempts"]) == (None, "InvalidCommand", 0)
    assert target in [detail["target"] for detail in error["details"]]
    assert sim.requests(kind="api") == []
