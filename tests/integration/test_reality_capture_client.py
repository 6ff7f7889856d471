"""Bentley's own v2 client works against the simulator unchanged (issue 26).

`@itwin/reality-capture` 1.7.0 from the npm registry, pinned with its whole dependency tree and
integrity hashes by tests/npm/reality-capture/package.json and package-lock.json, is installed
by this test into .ci-tools/reality-capture (gitignored; once per change of those two files).
`drive.mjs` then creates jobs with it, follows one's progress, lists them a page at a time and
cancels one, through the package's own `RealityCaptureService` and the global `fetch`, mapped
from https://api.bentley.com/ to the simulator.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from service.simulator import (
    ACCEPT_V2_MEDIA_TYPE,
    SimulatorConfig,
    SimulatorHandle,
    running_simulator,
)
from tests.support import ITWIN

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "tests" / "npm" / "reality-capture"
TOOLS = ROOT / ".ci-tools" / "reality-capture"
STAMP = TOOLS / ".installed-from"


def _pins_hash() -> str:
    pins = (PINS / "package.json").read_bytes() + (PINS / "package-lock.json").read_bytes()
    return hashlib.sha256(pins).hexdigest()


@pytest.fixture(scope="module")
def client_package() -> Path:
    """The pinned package installed with `npm ci` (which checks every integrity hash and never
    rewrites the lock); reused while the pins are unchanged."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail("Node.js and npm are needed to run Bentley's own client")
    want = _pins_hash()
    if STAMP.exists() and STAMP.read_text() == want and (TOOLS / "node_modules").is_dir():
        return TOOLS
    shutil.rmtree(TOOLS, ignore_errors=True)
    TOOLS.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(PINS / name, TOOLS / name)
    subprocess.run(
        [npm, "ci", "--prefix", str(TOOLS), "--ignore-scripts", "--no-audit", "--no-fund",
         "--loglevel=error"],
        check=True,
        timeout=300,
    )  # fmt: skip
    STAMP.write_text(want)
    return TOOLS


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    # 2 s jobs; a cancel takes a tenth of that to end.
    with running_simulator(SimulatorConfig(job_duration_seconds=20, time_scale=0.1)) as handle:
        yield handle


def drive(client_package: Path, sim: SimulatorHandle) -> dict[str, Any]:
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "SIMULATOR_CLIENT_ID": sim.client_id,
        "SIMULATOR_CLIENT_SECRET": sim.client_secret,
    }
    done = subprocess.run(
        ["node", str(PINS / "drive.mjs"), str(client_package), sim.base_url, ITWIN],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_bentleys_client_creates_follows_lists_and_cancels_v2_jobs(
    client_package: Path, sim: SimulatorHandle
) -> None:
    sim.reset()
    got = drive(client_package, sim)

    created = got["created"]
    assert [job["type"] for job in created] == ["Reconstruction", "Tiling", "Tiling"]
    assert {job["state"] for job in created} == {"Queued"}
    assert all(job["iTwinId"] == ITWIN for job in created)

    assert [len(page["ids"]) for page in got["pages"]] == [2, 1]
    assert [i for page in got["pages"] for i in page["ids"]] == [job["id"] for job in created]
    assert got["pages"][-1]["next"] is None
    next_query = parse_qs(urlsplit(got["pages"][0]["next"]).query)
    assert next_query["$filter"] == [f"iTwinId eq {ITWIN}"]
    assert next_query["$top"] == ["2"]

    assert got["cancel"]["state"] == "TerminatingOnCancel"
    assert got["cancelled"][-1]["state"] == "Cancelled"
    assert got["cancelAgain"]["status"] == 422
    assert got["cancelAgain"]["error"]["error"]["code"] == "InvalidRealityModelingRequest"

    progress = got["progress"]
    assert progress[0]["state"] == "Queued"
    assert progress[-1] == {"percentage": 100, "state": "Success"}
    assert [p["percentage"] for p in progress] == sorted(p["percentage"] for p in progress)
    finished = got["finished"]
    assert finished["state"] == "Success"
    assert set(finished["specifications"]["outputs"]) == {"modelingReference", "exports"}
    assert got["messages"] == {"errors": [], "warnings": []}

    assert got["unknown"] == {
        "status": 404,
        "error": {"error": {"code": "JobNotFound", "message": "Requested job is not available."}},
    }
    assert got["bucket"]["bucket"] == {"iTwinId": ITWIN}
    assert got["files"]["files"]

    # What the client sent, as written: `$` as %24, spaces as +, an empty token on page one.
    lists = [url for url in got["sent"] if urlsplit(url).path == "/reality-modeling/jobs"
             and "%24filter=" in url]  # fmt: skip
    assert lists[0].endswith("continuationToken=")
    assert "+eq+" in lists[0]
    calls = sim.requests()
    assert len(calls) == len(got["sent"])
    assert all(call.path.startswith("/reality-modeling/") for call in calls)
    assert {call.accept for call in calls} == {ACCEPT_V2_MEDIA_TYPE}
