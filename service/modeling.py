"""Reality Modeling v2 command bodies: a job's creation, a job by id, and a list's criteria.

A creation body is the API's own, forwarded unchanged: the envelope (`type`, `iTwinId`, `name`,
`specifications` with `inputs` and `outputs`) is checked for every type, and for Reconstruction,
Calibration, Tiling, Production, FillImageProperties and ImportPointCloud also the fields
`shared/design/api-beyond.md` names (required inputs, output names, export formats, `bkt:`
paths, Tiling's options). Everything else inside `specifications` is passed through as sent,
only held to finite numbers. Which rules apply depends on `type`, so `CreateModelingJob`
picks its model by the type (`parse_json`) and its schema says the same with one branch per
type.

A list's criteria never reach the API as producer text: each is checked (a GUID, an enum, a
time in one fixed form, a bounded name) and the worker writes the `$filter` itself, quoting
strings as OData does.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from service.messages import (
    Command,
    ContinuationToken,
    FiniteJson,
    FiniteNumber,
    NonEmpty,
    SafeId,
    integral_number,
)

ModelingJobType = Literal[
    "FillImageProperties",
    "ImportPointCloud",
    "Calibration",
    "Tiling",
    "Production",
    "Reconstruction",
    "Constraints",
    "TouchUpExport",
    "TouchUpImport",
    "WaterConstraints",
    "GaussianSplats",
]
"""The modeling job types (other types belong to `/reality-analysis/`)."""
OpenJobType = Literal[
    "Constraints", "TouchUpExport", "TouchUpImport", "WaterConstraints", "GaussianSplats"
]
"""Types whose specifications the facts do not spell out: only the envelope is checked."""
ModelingJobState = Literal[
    "Queued",
    "Active",
    "Success",
    "Failed",
    "TerminatingOnCancel",
    "TerminatingOnFailure",
    "Cancelled",
]
ExportFormat = Literal["3DTiles", "OBJ", "3MX", "I3S", "OSGB", "LAS", "PLY", "OPC", "OrthophotoDSM"]

JobName = Annotated[str, StringConstraints(min_length=3, strict=True)]
# A path in the iTwin's bucket. The schema side keeps to the dialect-free form of
# `service.messages` (anchored at the start only, plus a bad character found anywhere).
BucketPath = Annotated[
    str,
    StringConstraints(pattern=r"^bkt:[^\x00-\x1f\x7f]+$", strict=True),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 5,
            "pattern": "^bkt:",
            "not": {"pattern": "[\\u0000-\\u001f\\u007f]"},
            "description": "A path in the iTwin's bucket: `bkt:` and at least one character.",
        }
    ),
]
Inputs = dict[str, FiniteJson]


class Passthrough(BaseModel):
    """A part of a creation body: the fields named here are checked, the others are sent as
    they came (any JSON with finite numbers)."""

    model_config = ConfigDict(
        strict=True, extra="allow", frozen=True, allow_inf_nan=False, alias_generator=to_camel
    )
    __pydantic_extra__: dict[str, FiniteJson] = Field(init=False)


class ModelingExport(Passthrough):
    """One export of a Reconstruction or Production job."""

    format: ExportFormat
    options: Inputs | None = None
    name: str | None = None


class TilingOptions(Passthrough):
    """Tiling's options (also Reconstruction's, as in Bentley's SDK): the named enums."""

    modeling_reference_type: Literal["Orthophoto", "Complete"] | None = None
    tiling_mode: (
        Literal["NoTiling", "RegularPlanarGrid", "RegularVolumetricGrid", "Adaptive"] | None
    ) = None
    tiling_value: FiniteNumber | None = None
    geometric_precision: Literal["Medium", "High", "Extra", "Ultra"] | None = None


class ReconstructionInputs(Passthrough):
    scene: NonEmpty
    region_of_interest: BucketPath | None = None
    extent: BucketPath | None = None
    modeling_reference: NonEmpty | None = None
    presets: list[str] | None = None
    crs_data: BucketPath | None = None


class ReconstructionOutputs(Passthrough):
    modeling_reference: bool | None = None
    exports: list[ModelingExport] | None = None


class ReconstructionSpecifications(Passthrough):
    inputs: ReconstructionInputs
    outputs: ReconstructionOutputs
    options: TilingOptions | None = None


class CalibrationInputs(Passthrough):
    scene: NonEmpty
    presets: list[str] | None = None
    crs_data: BucketPath | None = None


class CalibrationSpecifications(Passthrough):
    inputs: CalibrationInputs
    outputs: list[Literal["scene", "report", "texturedTiePoints"]]
    options: Inputs | None = None


class TilingInputs(Passthrough):
    scene: NonEmpty
    region_of_interest: BucketPath | None = None
    presets: list[str] | None = None
    crs_data: BucketPath | None = None


class TilingSpecifications(Passthrough):
    inputs: TilingInputs
    outputs: list[Literal["modelingReference"]]
    options: TilingOptions | None = None


class ProductionInputs(Passthrough):
    scene: NonEmpty
    modeling_reference: NonEmpty
    extent: BucketPath | None = None
    presets: list[str] | None = None
    crs_data: BucketPath | None = None


class ProductionOutputs(Passthrough):
    exports: list[ModelingExport]


class ProductionSpecifications(Passthrough):
    inputs: ProductionInputs
    outputs: ProductionOutputs
    options: Inputs | None = None


_IMAGE_SOURCES = (
    ("imageCollections", "array"),
    ("sceneToProcess", "string"),
    ("sceneToComplete", "string"),
)


class FillImagePropertiesInputs(Passthrough):
    """At least one source of images: collections, a scene to process or one to complete."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": kind}}}
                for name, kind in _IMAGE_SOURCES
            ]
        }
    )

    image_collections: list[NonEmpty] | None = None
    scene_to_process: NonEmpty | None = None
    scene_to_complete: NonEmpty | None = None
    presets: list[str] | None = None

    @model_validator(mode="after")
    def _some_images(self) -> FillImagePropertiesInputs:
        sources = (self.image_collections, self.scene_to_process, self.scene_to_complete)
        if all(source is None for source in sources):
            raise PydanticCustomError(
                "missing", "one of imageCollections, sceneToProcess, sceneToComplete is required"
            )
        return self


class FillImagePropertiesSpecifications(Passthrough):
    inputs: FillImagePropertiesInputs
    outputs: list[Literal["scene"]]
    options: Inputs | None = None


class ImportPointCloudInputs(Passthrough):
    scene: NonEmpty
    crs_data: BucketPath | None = None


class ImportPointCloudSpecifications(Passthrough):
    inputs: ImportPointCloudInputs
    outputs: list[Literal["scanCollection", "scene"]]
    options: Inputs | None = None


class OpenSpecifications(Passthrough):
    """The envelope every type shares: inputs, outputs (a list of names or an object), and
    options if any."""

    inputs: Inputs
    outputs: Inputs | list[FiniteJson]
    options: Inputs | None = None


class CreateModelingJob(Command):
    """`modeling.job.create`: POST /reality-modeling/jobs, the API's creation body forwarded
    unchanged; the job is queued at once and followed to its end."""

    type: ModelingJobType
    name: JobName | None = None
    itwin_id: SafeId = Field(alias="iTwinId")
    specifications: Passthrough
    """Each type's model names its own; a body of no known type is refused for its type."""

    @classmethod
    def parse_json(cls, body: bytes) -> Command:
        # The type decides the rules. A body whose type is missing or unknown is validated by
        # the envelope itself, so its answer names that field along with any other.
        model = _MODELS_BY_TYPE.get(_type_of(body) or "", cls)
        return model.model_validate_json(body)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        schema: dict[str, Any] = TypeAdapter(_CreationBody).json_schema(by_alias=True)
        return schema


class CreateReconstruction(CreateModelingJob):
    type: Literal["Reconstruction"]
    specifications: ReconstructionSpecifications


class CreateCalibration(CreateModelingJob):
    type: Literal["Calibration"]
    specifications: CalibrationSpecifications


class CreateTiling(CreateModelingJob):
    type: Literal["Tiling"]
    specifications: TilingSpecifications


class CreateProduction(CreateModelingJob):
    type: Literal["Production"]
    specifications: ProductionSpecifications


class CreateFillImageProperties(CreateModelingJob):
    type: Literal["FillImageProperties"]
    specifications: FillImagePropertiesSpecifications


class CreateImportPointCloud(CreateModelingJob):
    type: Literal["ImportPointCloud"]
    specifications: ImportPointCloudSpecifications


class CreateOpenJob(CreateModelingJob):
    type: OpenJobType
    specifications: OpenSpecifications


_CreationBody = (
    CreateReconstruction
    | CreateCalibration
    | CreateTiling
    | CreateProduction
    | CreateFillImageProperties
    | CreateImportPointCloud
    | CreateOpenJob
)
_MODELS_BY_TYPE: dict[str, type[CreateModelingJob]] = {
    "Reconstruction": CreateReconstruction,
    "Calibration": CreateCalibration,
    "Tiling": CreateTiling,
    "Production": CreateProduction,
    "FillImageProperties": CreateFillImageProperties,
    "ImportPointCloud": CreateImportPointCloud,
    **dict.fromkeys(
        ("Constraints", "TouchUpExport", "TouchUpImport", "WaterConstraints", "GaussianSplats"),
        CreateOpenJob,
    ),
}


def _type_of(body: bytes) -> str | None:
    """The body's `type`, if it is a JSON object with a string there (the model decides the
    rest; the body was bounded before it got here)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    kind = document.get("type") if isinstance(document, dict) else None
    return kind if isinstance(kind, str) else None


class ModelingJobRef(Command):
    """`modeling.job.get`, `.cancel`, `.messages`, `.follow`: one v2 job, by id (goes to the
    path)."""

    job_id: SafeId = Field(alias="jobId")


# An iTwin id as the filter writes it, unquoted: only a GUID. The schema's pattern is anchored
# at the start and the length fixes the end.
_GUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
Guid = Annotated[
    str,
    StringConstraints(pattern=_GUID + "$", strict=True),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 36,
            "maxLength": 36,
            "pattern": _GUID,
            "description": "A GUID.",
        }
    ),
]
# A moment in the API's own form: UTC, whole seconds, `Z`. Digits are [0-9], not \d, which is
# any Unicode digit to some regex engines.
_INSTANT = (
    "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z"
)
Instant = Annotated[
    str,
    StringConstraints(pattern=_INSTANT + "$", strict=True),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 20,
            "maxLength": 20,
            "pattern": _INSTANT,
            "description": "UTC to the second, as the API writes it: 2025-03-06T09:42:33Z.",
        }
    ),
]
NAME_CRITERION_MAX = 256
NameCriterion = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=NAME_CRITERION_MAX, pattern=r"^[^\x00-\x1f\x7f]+$", strict=True
    ),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": NAME_CRITERION_MAX,
            "not": {"pattern": "[\\u0000-\\u001f\\u007f]"},
            "description": "A job's whole name (quoted by the worker; any quote is fine).",
        }
    ),
]
TOP_MAX = 1000
Top = Annotated[int, Field(ge=1, le=TOP_MAX), BeforeValidator(integral_number)]

FILTER_PARAMETER = "$filter"
TOP_PARAMETER = "$top"
TOKEN_PARAMETER = "continuationToken"  # noqa: S105 - a parameter's name
_CRITERIA = ("iTwinId", "state", "type", "name", "createdAfter", "createdBefore")


def quoted(text: str) -> str:
    """An OData string literal: in single quotes, each quote inside doubled."""
    return "'" + text.replace("'", "''") + "'"


class ListModelingJobs(Command):
    """`modeling.job.list`: GET /reality-modeling/jobs, one page. The criteria become the
    `$filter` the worker writes, joined by `and`; at least one criterion or a token."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in (*_CRITERIA, TOKEN_PARAMETER)
            ]
        }
    )

    itwin_id: Guid | None = Field(default=None, alias="iTwinId")
    state: ModelingJobState | None = None
    type: ModelingJobType | None = None
    name: NameCriterion | None = None
    created_after: Instant | None = Field(default=None, alias="createdAfter")
    created_before: Instant | None = Field(default=None, alias="createdBefore")
    top: Top | None = Field(default=None, description=f"Jobs a page, 1-{TOP_MAX} (API: 100).")
    continuation_token: ContinuationToken | None = Field(default=None, alias="continuationToken")

    @model_validator(mode="after")
    def _something_to_list_by(self) -> ListModelingJobs:
        if self.job_filter() is None and self.continuation_token is None:
            raise PydanticCustomError(
                "missing", f"at least one of {', '.join(_CRITERIA)} or continuationToken"
            )
        return self

    def job_filter(self) -> str | None:
        """The OData `$filter` of the criteria: values checked above, strings quoted here."""
        terms = []
        if self.itwin_id is not None:
            terms.append(f"iTwinId eq {self.itwin_id}")  # a GUID literal, as the API's pages
        if self.state is not None:
            terms.append(f"state eq {quoted(self.state)}")
        if self.type is not None:
            terms.append(f"type eq {quoted(self.type)}")
        if self.name is not None:
            terms.append(f"name eq {quoted(self.name)}")
        if self.created_after is not None:
            terms.append(f"createdDateTime gt {self.created_after}")
        if self.created_before is not None:
            terms.append(f"createdDateTime lt {self.created_before}")
        return " and ".join(terms) or None

    def query_parameters(self) -> tuple[tuple[str, str], ...]:
        parameters = []
        job_filter = self.job_filter()
        if job_filter is not None:
            parameters.append((FILTER_PARAMETER, job_filter))
        if self.top is not None:
            parameters.append((TOP_PARAMETER, str(self.top)))
        if self.continuation_token is not None:
            parameters.append((TOKEN_PARAMETER, self.continuation_token))
        return tuple(parameters)
