"""Command bodies as the API pages define them.

Every field of a command is hostile until these models accept it. The rules are the pages' own
(required fields, enums, the application name rules), so a body that breaks one never costs an
API call; anything that ends up in a URL path must also match `SafeId`.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError
from typing_extensions import TypeAliasType

# The JSON Schemas in schemas/ must accept exactly what these models accept, under any
# validator. Regex dialects disagree on `$` (Python's, Java's and .NET's also match before a
# final line break) and some have no lookaround (Go's, Rust's), so the schema side of each
# pattern below is written with neither: a pattern anchored only at the start, plus `not`
# of a pattern that finds one bad character anywhere.

# An id that goes into a URL path or a query. iTwin ids are GUIDs; this also admits other opaque
# ids made of letters, digits, '-' and '_', and nothing that could add a path segment, a query
# or a host.
SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
SafeId = Annotated[
    str,
    StringConstraints(pattern=SAFE_ID_PATTERN, strict=True),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "pattern": "^[A-Za-z0-9]",
            "not": {"pattern": "[^A-Za-z0-9_-]"},
            "description": "Letters, digits, '-' and '_' (not first); at most 128.",
        }
    ),
]
NonEmpty = Annotated[str, StringConstraints(min_length=1, strict=True)]

CONTINUATION_TOKEN_MAX = 2048
# Opaque, so any character but a control character; it only ever travels in a query string,
# percent-encoded.
ContinuationToken = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=CONTINUATION_TOKEN_MAX, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": CONTINUATION_TOKEN_MAX,
            "not": {"pattern": "[\\u0000-\\u001f\\u007f]"},
            "description": "The `continuationToken` of the previous page's event, unchanged.",
        }
    ),
]


def _finite(value: JsonValue) -> JsonValue:
    # JSON text such as 1e400 or NaN parses to a float that no JSON document can carry: the
    # request could not even be written. Iterative, so depth costs no Python stack.
    pending: list[JsonValue] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite")
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return value


_Finite = Annotated[float, Field(ge=-sys.float_info.max, le=sys.float_info.max)]
FiniteJsonValue = TypeAliasType(
    "FiniteJsonValue",
    "str | bool | int | _Finite | list[FiniteJsonValue] | dict[str, FiniteJsonValue] | None",
)


class _FiniteJsonSchema:
    """Schema side of `FiniteJson`: any JSON value whose numbers are all finite, written as a
    recursive definition (the same bound as `FiniteNumber`, at every depth)."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(TypeAdapter(FiniteJsonValue).core_schema)


FiniteJson = Annotated[JsonValue, AfterValidator(_finite), _FiniteJsonSchema]
"""A part of a body the worker passes through unchanged: any JSON, but only finite numbers."""


def integral_number(value: Any) -> Any:
    # JSON has one number type: every JSON Schema validator counts 5.0 as an integer, so the
    # worker does too (and sends 5). 5.5 stays a float and is refused as not an integer.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The bound before the validator: after it, pydantic's schema would say `ge`, no JSON Schema word.
Count = Annotated[int, Field(ge=0), BeforeValidator(integral_number)]
# A number the API can be sent: JSON text such as 1e400 parses to infinity, which is no JSON
# number at all; the schema's bound refuses it as the model does.
FiniteNumber = Annotated[float, Field(ge=0, le=sys.float_info.max)]

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
    # The same rule for schema readers, found anywhere in the text (line breaks included).
    Field(json_schema_extra={"not": {"pattern": r"[<>^$?]|\|\|"}}),
]


def _not_null(schema: dict[str, Any]) -> None:
    """The JSON Schema of an optional field that may be left out but never sent as null."""
    options = [option for option in schema.pop("anyOf") if option != {"type": "null"}]
    schema.update(options[0])
    schema.pop("default", None)


class Command(BaseModel):
    """Base of every command body: strict types and no unknown fields.

    A misspelt optional field (say `itwinId`) would otherwise be dropped without a word and the
    API would act on a body the producer did not mean.
    """

    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )

    SENDS_NULL: ClassVar[frozenset[str]] = frozenset()
    """Fields (JSON names) whose null the API acts on, so it is sent rather than dropped."""

    @classmethod
    def parse_json(cls, body: bytes) -> Command:
        """The body, validated; a command whose rules depend on one of its fields picks the
        model for them here."""
        return cls.model_validate_json(body)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema that accepts exactly what `parse_json` accepts."""
        return cls.model_json_schema(by_alias=True)

    def query_parameters(self) -> tuple[tuple[str, str], ...]:
        """Query parameters the body implies beyond its own fields (`CommandSpec.query`): a
        list's `$filter`, written by the worker from the criteria."""
        return ()


class CreateWorkspace(Command):
    """`workspace.create`: POST /contextcapture/workspaces."""

    name: NonEmpty
    itwin_id: str | None = Field(default=None, alias="iTwinId")


class GetWorkspace(Command):
    """`workspace.get`, `workspace.delete`: one workspace, by id (goes to the path)."""

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
    processing_engines: Count | None = Field(default=None, alias="processingEngines")
    outputs: list[OutputFormat] | None = None
    cache_settings: CacheSettings | None = Field(default=None, alias="cacheSettings")


class CostEstimationParameters(Command):
    giga_pixels: FiniteNumber | None = Field(default=None, alias="gigaPixels")
    mega_points: FiniteNumber | None = Field(default=None, alias="megaPoints")
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
    """`job.submit`, `job.cancel`, `job.get`, `job.follow`, `job.delete`: one job, by id (goes
    to the path)."""

    job_id: SafeId = Field(alias="jobId")


class UpdateJob(Command):
    """`job.update`: PATCH /contextcapture/jobs/{jobId} with new settings, cost estimation
    parameters or both (a job's `state` is `job.submit`'s and `job.cancel`'s)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "object"}}}
                for name in ("settings", "costEstimationParameters")
            ]
        }
    )

    job_id: SafeId = Field(alias="jobId")
    settings: JobSettings | None = None
    cost_estimation_parameters: CostEstimationParameters | None = Field(
        default=None, alias="costEstimationParameters"
    )

    @model_validator(mode="after")
    def _something_to_change(self) -> UpdateJob:
        if self.settings is None and self.cost_estimation_parameters is None:
            raise PydanticCustomError(
                "missing", "settings, costEstimationParameters or both are required"
            )
        return self


class GetEngines(Command):
    """`engines.get`: GET /contextcapture/limits/engines, for one iTwin if given (a query
    value)."""

    itwin_id: SafeId | None = Field(default=None, alias="iTwinId")


class ListRepositories(Command):
    """`repository.list`: GET /itwins/{iTwinId}/repositories, optionally of one class (and
    subClass, which needs its class); class and subClass are query values."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"required": ["subClass"], "properties": {"subClass": {"type": "string"}}},
            "then": {"required": ["class"], "properties": {"class": {"type": "string"}}},
        }
    )

    itwin_id: SafeId = Field(alias="iTwinId")
    class_: RepositoryClass | None = Field(default=None, alias="class")
    sub_class: RepositorySubClass | None = Field(default=None, alias="subClass")

    @model_validator(mode="after")
    def _sub_class_needs_its_class(self) -> ListRepositories:
        if self.sub_class is not None and self.class_ is None:
            raise PydanticCustomError("missing", "subClass is only a filter together with class")
        return self


class RepositoryRef(Command):
    """`repository.get`, `repository.delete`: one repository of an iTwin, by id (both go to the
    path)."""

    itwin_id: SafeId = Field(alias="iTwinId")
    repository_id: SafeId = Field(alias="repositoryId")


class UpdateRepository(Command):
    """`repository.update`: PATCH /itwins/{iTwinId}/repositories/{repositoryId}. Only the fields
    given change; `authentication` and `options` are replaced whole, or removed with null;
    `displayName` and `uri` cannot be null; class, subClass and id never change."""

    SENDS_NULL: ClassVar[frozenset[str]] = frozenset({"authentication", "options"})

    itwin_id: SafeId = Field(alias="iTwinId")
    repository_id: SafeId = Field(alias="repositoryId")
    display_name: NonEmpty | None = Field(
        default=None, alias="displayName", json_schema_extra=_not_null
    )
    uri: NonEmpty | None = Field(default=None, json_schema_extra=_not_null)
    authentication: dict[str, Any] | None = Field(
        default=None, description="The whole authentication object, or null to remove it."
    )
    options: dict[str, Any] | None = Field(
        default=None, description="The whole options object, or null to remove it."
    )

    @field_validator("display_name", "uri", mode="before")
    @classmethod
    def _never_null(cls, value: Any) -> Any:
        if value is None:
            raise PydanticCustomError("string_type", "cannot be null: leave the field out")
        return value


class ListApplications(Command):
    """`application.list`: GET /library/applications, one page; the next page's token goes to
    the query."""

    continuation_token: ContinuationToken | None = Field(default=None, alias="continuationToken")


class ApplicationRef(Command):
    """`application.get`, `application.delete`: one application, by id (goes to the path)."""

    application_id: SafeId = Field(alias="applicationId")


class UpdateApplication(Command):
    """`application.update`: PUT /library/applications/{applicationId}, a whole replacement
    under the creation's name rules."""

    application_id: SafeId = Field(alias="applicationId")
    display_name: ApplicationText = Field(alias="displayName")
    version: ApplicationText
