"""The simulator's knobs: one frozen model, replaced as a whole when changed at runtime.

Replacing (rather than mutating) the model means a request always sees one consistent set of
knobs, and `/_simulator/reset` can restore the start-up model as it was.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

from .lifecycle import JobOutcome

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

MASKED = "********"
ISSUER_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*[^\s/?#])?$"
"""An http(s) URL without query, fragment or trailing slash: OIDC compares issuers exactly."""


class SimulatorConfig(BaseModel):
    """Credentials, limits and fault injection of one simulator instance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clients: dict[str, str] = Field(
        default_factory=lambda: {"demo-client": "demo-secret"}, min_length=1, repr=False
    )
    """client_id -> client_secret; kept out of repr so the secrets never reach a log line."""
    token_lifetime_seconds: PositiveInt = 3600
    issuer: Annotated[str, Field(pattern=ISSUER_PATTERN)] | None = None
    """The tokens' `iss` and the discovery's `issuer`. None: the URL the client called us by
    (scheme, host, port), so it is right wherever the simulator runs, as long as a client
    fetches and uses its tokens through the same address."""
    rate_limit_per_second: Annotated[float, Field(gt=0)] | None = None
    """The simulator's own per-client token bucket; None means unlimited."""
    rate_limit_burst: PositiveInt = 10
    retry_after_seconds: PositiveInt = 1
    """Least retry-after a 429 of the own limit names (more if the bucket needs longer)."""
    latency_ms: NonNegativeFloat = 0.0
    jitter_ms: NonNegativeFloat = 0.0
    error_rate: Fraction = 0.0
    error_statuses: list[Literal[500, 503]] = Field(default=[500, 503], min_length=1)
    """Which injected errors `error_rate` picks from (at random)."""
    hang_rate: Fraction = 0.0
    hang_seconds: NonNegativeFloat = 3600.0
    drop_after_rate: Fraction = 0.0
    """Fraction of API calls that take effect and then lose their answer: the connection is
    closed without a byte of it."""
    token_endpoint_down: bool = False
    engine_limit: NonNegativeInt = 20
    library_forbidden: bool = False
    job_duration_seconds: PositiveFloat = 60.0
    """Simulated time from a job's submission (a v2 job's creation) to its end."""
    time_scale: PositiveFloat = 1.0
    """Real seconds per simulated second: 0.01 runs a 60 s job in 0.6 s. Jobs only."""
    job_outcome: JobOutcome = "success"
    """How submitted (and v2) jobs end unless `/_simulator/jobs/{id}/outcome` says otherwise."""
    request_log_limit: PositiveInt = 100_000
    """Oldest entries are dropped past this, so a long-running simulator does not grow forever."""

    def public(self) -> dict[str, Any]:
        """The config as JSON with the client secrets masked (admin answers are not secret)."""
        data = self.model_dump(mode="json")
        data["clients"] = dict.fromkeys(self.clients, MASKED)
        return data

    def updated(self, changes: dict[str, Any]) -> SimulatorConfig:
        """A validated copy with `changes` applied (model_copy would skip validation)."""
        return SimulatorConfig.model_validate({**self.model_dump(), **changes})
