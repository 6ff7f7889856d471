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
from redis.asyncio.connection import parse_url

from service.limits import KIB, MIN_EVENT_BYTES, Limits

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
        env_prefix="ITWIN_WORKER_",
        extra="ignore",
        frozen=True,
        validate_default=True,
        # The docstrings below each field are its description (docs/configuration.md).
        use_attribute_docstrings=True,
    )

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    """The broker: `amqp://` or `amqps://`, user, password and vhost."""
    api_base_url: AnyHttpUrl = AnyHttpUrl("https://api.bentley.com")
    """The iTwin Platform (or the simulator)."""
    token_url: AnyHttpUrl = AnyHttpUrl("https://ims.bentley.com/connect/token")
    """The OAuth2 token endpoint (client credentials)."""
    client_id: str | None = None
    """The service client's id; required to run."""
    client_secret: SecretStr | None = None
    """Its secret; required to run, never logged."""
    scopes: str = "itwin-platform"
    """Requested scopes (the per-API scopes are deprecated upstream)."""

    rate_limit_per_second: PositiveFloat = COMMUNITY_RATE_PER_SECOND
    """The token bucket's rate, shared by every call and every replica. 8/s and a burst of 20
    fit the Community tier: no 60 s window over 500 calls."""
    rate_limit_burst: PositiveInt = COMMUNITY_BURST
    """The token bucket's capacity."""
    rate_limit_per_hour: PositiveInt | None = None
    """Optional hourly budget (Community: 5000); 10 % of it may be spent as a burst, so no
    60-minute window exceeds it."""
    rate_limit_wait_budget_seconds: PositiveFloat = 300.0
    """Total time a command may spend paused by 429 answers before it fails."""
    default_retry_after_seconds: PositiveFloat = 5.0
    """Pause after a 429 that names no usable retry-after."""

    redis_url: str | None = None
    """One Redis (`redis://`, `rediss://`, `unix://`), or one node of a Redis Cluster."""
    redis_sentinels: Annotated[list[str], NoDecode] = []
    """`host:port` of each sentinel: the master is found (and followed) through them."""
    redis_sentinel_master: str | None = None
    """The name the sentinels know the master by."""
    redis_cluster: bool = False
    """`redis_url` names one node of a Redis Cluster; the others are found from it."""
    redis_username: str | None = None
    """ACL user of the Redis servers when `redis_url` names none (Sentinel mode has no URL)."""
    redis_password: SecretStr | None = None
    """Password of the Redis servers when `redis_url` carries none."""
    redis_sentinel_password: SecretStr | None = None
    """Password of the sentinels themselves (`requirepass` in their configuration)."""
    redis_timeout_seconds: PositiveFloat = 1.0
    """A Redis connect or answer that takes longer fails the attempt (retries: docs/redis.md)."""
    redis_prefix: str = Field(default="itwin-worker", min_length=1, pattern=r"^[^{}]*$")
    """Start of every key; no braces, which would change the keys' Cluster hash slots."""

    http_host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet, on the pod IP
    """Address of `/healthz`, `/readyz`, `/metrics`."""
    http_port: int = Field(default=8080, ge=0, le=65535)
    """`/healthz`, `/readyz`, `/metrics`; 0 picks a free port (tests)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """DEBUG, INFO, WARNING or ERROR."""
    log_format: Literal["json", "console"] = "json"
    """`json` lines, or `console` for people at a terminal."""

    # OpenTelemetry: the SDK's own variables, by their standard names (docs/tracing.md). These
    # decide whether an exporter runs at all; the SDK reads the rest itself.
    otel_sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")
    """True: no tracing SDK at all (trace context is still passed on)."""
    otel_traces_exporter: Literal["otlp", "none"] = Field(
        default="otlp", validation_alias="OTEL_TRACES_EXPORTER"
    )
    """`none`: no exporter, as without an endpoint."""
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    """The OTLP/HTTP collector; unset (and no traces endpoint): no exporter runs."""
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    """The collector's traces URL, when it is not the endpoint's `/v1/traces`."""
    otel_exporter_otlp_protocol: Literal["http/protobuf"] = Field(
        default="http/protobuf", validation_alias="OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    """Only OTLP over HTTP with protobuf is built in (no gRPC exporter is installed)."""
    otel_exporter_otlp_traces_protocol: Literal["http/protobuf"] = Field(
        default="http/protobuf", validation_alias="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    )
    """The same, for traces only."""
    otel_service_name: str = Field(default="itwin-worker", validation_alias="OTEL_SERVICE_NAME")
    """The `service.name` of the worker's spans."""
    job_poll_schedule: Annotated[list[PositiveFloat], NoDecode] = [15.0, 30.0, 60.0, 120.0]
    """The shortest intervals between a job's progress polls; they stretch when the budget is
    full (docs/budget.md)."""
    poll_min_share: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Share of the API budget job polls keep while commands wait (commands go first
    otherwise), so following never stops under a constant command backlog."""

    command_exchange: str = "itwin.commands"
    """Where producers publish commands (topic)."""
    event_exchange: str = "itwin.events"
    """Where events go (topic; routing key = event type)."""
    queue_prefix: str = "itwin-worker."
    """Prefix of the worker's queues and of its retry and replay exchanges."""
    dead_letter_queue: str = "itwin-worker.dlq"
    """Commands the worker could not process, with headers saying why."""
    prefetch: PositiveInt = 32
    """Commands one worker process takes from each queue at once (the prefetch count of each
    consumer: RabbitMQ applies it per consumer). It sizes the memory: docs/running.md."""
    max_command_bytes: int = Field(default=Limits.command_bytes, ge=KIB)
    """A command body larger than this is refused unread (`InvalidCommand`). The broker
    delivers it whole all the same: its own `max_message_size` bounds that (docs/running.md)."""
    max_response_bytes: int = Field(default=Limits.response_bytes, ge=KIB)
    """An API answer is not read past this many bytes: a larger one is a failure event
    (`ResponseTooLarge`, or `OutcomeUnknown` when a POST or state change succeeded)."""
    max_event_bytes: int = Field(default=Limits.event_bytes, ge=MIN_EVENT_BYTES)
    """No event is larger: a result that would be is a `ResultTooLarge` failure event. Keep it
    well below the broker's `max_message_size` (16 MiB on RabbitMQ 4, 128 MiB on 3.x)."""
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
    """Connecting to the API or the token endpoint."""
    api_read_timeout_seconds: PositiveFloat = 30.0
    """Waiting for an answer (also for a pooled connection)."""
    retry_attempts: PositiveInt = 4
    """Attempts per command for transient failures (connect errors, 502/503/504)."""
    retry_initial_seconds: PositiveFloat = 0.5
    """First back-off of an API retry, and of a crashed command's redelivery; doubles."""
    retry_max_seconds: PositiveFloat = 10.0
    """Ceiling of those back-offs."""
    token_refresh_margin_seconds: PositiveFloat = 300.0
    """Refresh a token this long before it expires (a tenth of its life for short-lived
    tokens)."""

    breaker_failures: PositiveInt = 5
    """Retriable failures in a row (connect errors, timeouts, 5xx; not 429) that open the
    circuit breaker of the API, or of the token endpoint (docs/failure-modes.md)."""
    breaker_probe_initial_seconds: PositiveFloat = 1.0
    """Wait from the breaker's opening to its first probe; doubled after each failed probe."""
    breaker_probe_max_seconds: PositiveFloat = 10.0
    """Longest wait between two probes of an open breaker."""

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

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _parse_sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            sentinel_address(address)
        return value

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
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        options = parse_url(value)  # raises ValueError naming a bad query option
        if str(options.get("ssl_cert_reqs", "required")).lower() != "required" or (
            options.get("ssl_check_hostname") is False
        ):
            raise ValueError("TLS to Redis is always verified: drop ssl_cert_reqs and the like")
        return value

    @model_validator(mode="after")
    def _redis_mode(self) -> Settings:
        """One of three modes (docs/redis.md), or none; a half-configured one is refused."""
        url, sentinels, master = self.redis_url, self.redis_sentinels, self.redis_sentinel_master
        if sentinels and self.redis_cluster:
            raise ValueError(
                "ITWIN_WORKER_REDIS_SENTINELS and ITWIN_WORKER_REDIS_CLUSTER exclude each other"
            )
        if sentinels and url:
            raise ValueError(
                "ITWIN_WORKER_REDIS_SENTINELS finds the master itself: unset ITWIN_WORKER_REDIS_URL"
            )
        if sentinels and not master:
            raise ValueError(
                "ITWIN_WORKER_REDIS_SENTINELS needs ITWIN_WORKER_REDIS_SENTINEL_MASTER, "
                "the name the sentinels know the master by"
            )
        if master and not sentinels:
            raise ValueError(
                "ITWIN_WORKER_REDIS_SENTINEL_MASTER needs ITWIN_WORKER_REDIS_SENTINELS "
                "(host:port,host:port)"
            )
        if self.redis_cluster:
            if not url:
                raise ValueError(
                    "ITWIN_WORKER_REDIS_CLUSTER needs ITWIN_WORKER_REDIS_URL naming one node"
                )
            options = parse_url(url)
            if "path" in options or options.get("db", 0) != 0:
                raise ValueError(
                    "ITWIN_WORKER_REDIS_CLUSTER: a cluster is reached over TCP (redis:// or "
                    "rediss://) and has only database 0"
                )
        if url and self.redis_password is not None and "password" in parse_url(url):
            raise ValueError(
                "ITWIN_WORKER_REDIS_PASSWORD and a password in ITWIN_WORKER_REDIS_URL: give one"
            )
        return self

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


def sentinel_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) as the pair redis-py's Sentinel takes."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


class SettingsError(Exception):
    """Raised at start-up with one line per bad variable, named as the operator wrote it."""


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and explicit overrides) or fail naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            if not field:  # a rule across fields: its message names them
                lines.append(str(error.get("ctx", {}).get("error", error["msg"])))
                continue
            name = field if field.startswith("OTEL_") else f"ITWIN_WORKER_{field.upper()}"
            lines.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
