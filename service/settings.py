"""The worker's configuration: every knob, read once from `ITWIN_WORKER_*` variables.

Nothing else in the package reads the environment; the bootstrap builds one `Settings` and hands
the values it needs to each part.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Community tier: 500 calls a minute. 8/s for 60 s is 480, plus a burst of 20 is exactly 500,
# so no 60-second window can exceed the budget even when the burst is spent inside it.
COMMUNITY_RATE_PER_SECOND = 8.0
COMMUNITY_BURST = 20


def _seconds_list(value: object) -> object:
    if isinstance(value, str):
        return [float(part) for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the worker can be told from outside; defaults are the contract's."""

    model_config = SettingsConfigDict(
        env_prefix="ITWIN_WORKER_", extra="ignore", frozen=True, validate_default=True
    )

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    api_base_url: AnyHttpUrl = AnyHttpUrl("https://api.bentley.com")
    token_url: AnyHttpUrl = AnyHttpUrl("https://ims.bentley.com/connect/token")
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scopes: str = "itwin-platform"

    rate_limit_per_second: PositiveFloat = COMMUNITY_RATE_PER_SECOND
    rate_limit_burst: PositiveInt = COMMUNITY_BURST
    rate_limit_per_hour: PositiveInt | None = None
    rate_limit_wait_budget_seconds: PositiveFloat = 300.0
    """Total time a command may spend paused by 429 answers before it fails."""
    default_retry_after_seconds: PositiveFloat = 5.0
    """Pause after a 429 that names no usable retry-after."""

    redis_url: str | None = None
    redis_prefix: str = "itwin-worker"

    http_host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet, on the pod IP
    http_port: int = Field(default=8080, ge=0, le=65535)
    """`/healthz`, `/readyz`, `/metrics`; 0 picks a free port (tests)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    job_poll_schedule: Annotated[list[PositiveFloat], NoDecode] = [15.0, 30.0, 60.0, 120.0]

    command_exchange: str = "itwin.commands"
    event_exchange: str = "itwin.events"
    queue_prefix: str = "itwin-worker."
    dead_letter_queue: str = "itwin-worker.dlq"
    prefetch: PositiveInt = 32
    """Commands one worker process handles at once (the channel's prefetch count)."""
    delivery_limit: PositiveInt = 5
    """Redeliveries after which the broker dead-letters a command that keeps crashing us."""
    reply_to_pattern: str = r"^(amq\.rabbitmq\.reply-to.*|reply\..+)$"
    """Which `reply_to` values are honoured: the whole value must match (RabbitMQ direct
    reply-to always is, the worker's own queues never are)."""

    ca_bundle: Path | None = None
    """Extra PEM file of CAs trusted for the API and the token endpoint, besides the system's
    (or `SSL_CERT_FILE` / `SSL_CERT_DIR`'s). TLS is always verified. Read when the worker
    starts (a missing or unreadable file stops it there, naming this variable)."""
    proxies_from_environment: bool = True
    """Read `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY` (any case) for the API and the
    token endpoint, as standard clients do; false ignores them (direct connections)."""

    api_connect_timeout_seconds: PositiveFloat = 5.0
    api_read_timeout_seconds: PositiveFloat = 30.0
    retry_attempts: PositiveInt = 4
    """Attempts per command for transient failures (connect errors, 502/503/504)."""
    retry_initial_seconds: PositiveFloat = 0.5
    """First back-off of an API retry, and of a crashed command's redelivery; doubles."""
    retry_max_seconds: PositiveFloat = 10.0
    token_refresh_margin_seconds: PositiveFloat = 300.0

    retry_delays: Annotated[list[PositiveFloat], NoDecode] = [10.0, 60.0, 300.0]
    """Delayed redeliveries after a retriable failure (delay queues), before it is final."""
    idempotency_ttl_seconds: PositiveFloat = 86400.0
    """How long a command's outcome is kept to answer a redelivery or a re-send."""
    idempotency_lease_seconds: PositiveFloat = 30.0
    """How long one worker may hold a command before another may take it over."""

    shutdown_grace_seconds: PositiveFloat = 25.0
    """Fits Kubernetes' default terminationGracePeriodSeconds of 30 with room to exit."""

    @field_validator("job_poll_schedule", "retry_delays", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        return _seconds_list(value)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    @field_validator("reply_to_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _schedule_not_empty(self) -> Settings:
        if not self.job_poll_schedule:
            raise ValueError("ITWIN_WORKER_JOB_POLL_SCHEDULE must name at least one interval")
        return self

    def command_queue(self, routing_key: str) -> str:
        return f"{self.queue_prefix}{routing_key}"

    @property
    def unrouted_queue(self) -> str:
        return f"{self.queue_prefix}unrouted"

    @property
    def poll_queue(self) -> str:
        """Where the next look at a followed job waits for a worker."""
        return f"{self.queue_prefix}job.poll"

    @property
    def retry_exchange(self) -> str:
        """Where the delay queues dead-letter back to the work queues; only the worker writes."""
        return f"{self.queue_prefix}retry"

    @property
    def replay_exchange(self) -> str:
        """Where `itwin-worker dlq replay` publishes; only operators write."""
        return f"{self.queue_prefix}replay"

    def delay_queue(self, seconds: float) -> str:
        # Not `delay.<N>s`: those queues dead-letter to the default exchange, and RabbitMQ
        # refuses to redeclare a queue with another dead-letter exchange.
        return f"{self.queue_prefix}wait.{seconds:g}s"


class SettingsError(Exception):
    """Raised at start-up with one line per bad variable, named as the operator wrote it."""


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and explicit overrides) or fail naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            lines.append(f"ITWIN_WORKER_{field.upper()}: {error['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
