"""Command bodies as the API pages define them.

Every field of a command is hostile until these models accept it. The rules are the pages' own
(required fields, enums, the application name rules), so a body that breaks one never costs an
API call; anything that ends up in a URL path must also match `SafeId`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# An id that goes into a URL path. iTwin ids are GUIDs; this also admits other opaque ids made
# of letters, digits, '-' and '_', and nothing that could add a path segment, a query or a host.
SafeId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$", strict=True)
]
NonEmpty = Annotated[str, StringConstraints(min_length=1, strict=True)]

JobType = Literal["Full", "Calibration", "Reconstruction"]
Quality = Literal["Draft", "Medium", "Extra"]
OutputFormat = Literal[
    "CCOrientations",
    "3MX",
    "3SM",
    "WebReady ScalableMesh",
    "Cesium 3D Tiles",
    "POD",
    "Orthophoto/DSM",
    "LAS",
    "FBX",
    "OBJ",
    "ESRI i3s",
    "DGN",
    "LODTreeExport",
    "PLY",
    "OPC",
    "OMR",
    "ContextScene",
]
# The iTwin Repository Class and SubClass tables, plus Subsurface / EvoWorkspace, which the
# POST description lists as addable. Which pairs the POST accepts is the API's decision.
RepositoryClass = Literal[
    "RealityData",
    "iModels",
    "Storage",
    "Forms",
    "Issues",
    "Construction",
    "GeographicInformationSystem",
    "Subsurface",
]
RepositorySubClass = Literal[
    "WebMapService", "WebMapTileService", "MapServer", "Performance", "EvoWorkspace"
]

APPLICATION_FORBIDDEN = (">", "<", "^", "$", "?", "||")


def _no_forbidden_characters(value: str) -> str:
    if any(token in value for token in APPLICATION_FORBIDDEN):
        raise ValueError("must not include these special characters: >, <, ^, $, ?, ||")
    return value


ApplicationText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=250, strict=True),
    AfterValidator(_no_forbidden_characters),
    # The same rule for schema readers; validation above does not depend on regex lookahead.
    Field(json_schema_extra={"pattern": r"^(?!.*\|\|)[^<>^$?]*$"}),
]


class Command(BaseModel):
    """Base of every command body: strict types and no unknown fields.

    A misspelt optional field (say `itwinId`) would otherwise be dropped without a word and the
    API would act on a body the producer did not mean.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)


class CreateWorkspace(Command):
    """`workspace.create`: POST /contextcapture/workspaces."""

    name: NonEmpty
    itwin_id: str | None = Field(default=None, alias="iTwinId")


class GetWorkspace(Command):
    """`workspace.get`: GET /contextcapture/workspaces/{workspaceId}."""

    workspace_id: SafeId = Field(alias="workspaceId")


class JobInput(Command):
    """One reality data input of a job."""

    id: NonEmpty
    description: str | None = None


class CacheSettings(Command):
    create_cache: bool | None = Field(default=None, alias="createCache")
    use_cache: str | None = Field(default=None, alias="useCache")


class JobSettings(Command):
    quality: Quality | None = None
    processing_engines: Annotated[int, Field(ge=0)] | None = Field(
        default=None, alias="processingEngines"
    )
    outputs: list[OutputFormat] | None = None
    cache_settings: CacheSettings | None = Field(default=None, alias="cacheSettings")


class CostEstimationParameters(Command):
    giga_pixels: Annotated[float, Field(ge=0)] | None = Field(default=None, alias="gigaPixels")
    mega_points: Annotated[float, Field(ge=0)] | None = Field(default=None, alias="megaPoints")
    mesh_quality: Quality | None = Field(default=None, alias="meshQuality")


class CreateJob(Command):
    """`job.create`: the API's job-creation body, forwarded unchanged."""

    type: JobType
    name: NonEmpty
    workspace_id: NonEmpty = Field(alias="workspaceId")
    inputs: list[JobInput]
    settings: JobSettings
    cost_estimation_parameters: CostEstimationParameters | None = Field(
        default=None, alias="costEstimationParameters"
    )


class CreateRepository(Command):
    """`repository.create`: POST /itwins/{iTwinId}/repositories; iTwinId goes to the path."""

    itwin_id: SafeId = Field(alias="iTwinId")
    class_: RepositoryClass = Field(alias="class")
    sub_class: RepositorySubClass | None = Field(default=None, alias="subClass")
    uri: NonEmpty


class CreateApplication(Command):
    """`application.create`: POST /library/applications."""

    display_name: ApplicationText = Field(alias="displayName")
    version: ApplicationText


class JobRef(Command):
    """`job.submit`, `job.cancel`, `job.get`, `job.follow`: one job, by id (goes to the path)."""

    job_id: SafeId = Field(alias="jobId")
