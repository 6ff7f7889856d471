"""Prometheus metrics of the worker, in a registry of its own (one per `Worker`).

Labels are bounded: routing keys are the catalogue's (anything else is `unknown`), endpoints are
path templates, error codes come from the API or the worker, never from free text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.limiter import PRIORITIES

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    def __init__(self, known_routing_keys: frozenset[str] = frozenset()) -> None:
        self.registry = CollectorRegistry()
        self._known = known_routing_keys
        registry = self.registry
        self.commands_received = Counter(
            "itwin_worker_commands_received_total",
            "Commands taken from the queues.",
            ["routing_key"],
            registry=registry,
        )
        self.commands_finished = Counter(
            "itwin_worker_commands_finished_total",
            "Commands finished, by outcome: success, failure, duplicate (recorded event "
            "published again) or delayed (sent to a delay queue).",
            ["routing_key", "outcome", "error_code"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "itwin_worker_commands_in_flight", "Commands being worked on now.", registry=registry
        )
        self.dead_letters = Counter(
            "itwin_worker_dead_letters_total",
            "Commands copied to the dead-letter queue.",
            ["error_code"],
            registry=registry,
        )
        self.api_latency = Histogram(
            "itwin_worker_api_request_duration_seconds",
            "API request latency by endpoint template and HTTP status (0: no answer).",
            ["method", "endpoint", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.limiter_wait = Histogram(
            "itwin_worker_limiter_wait_seconds",
            "Time a call waited for a rate-limiter token.",
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.limiter_waiting = Gauge(
            "itwin_worker_limiter_waiting",
            "Calls of this process waiting for the API budget, by class: command or poll.",
            ["class"],
            registry=registry,
        )
        self.budget_used = Counter(
            "itwin_worker_budget_used_total",
            "API calls that took a slot of the budget (each attempt), by class: command or poll.",
            ["class"],
            registry=registry,
        )
        self.poll_lag = Histogram(
            "itwin_worker_job_poll_lag_seconds",
            "How late a job poll's progress call came after its scheduled time: the stretch "
            "when the budget cannot poll every followed job on schedule.",
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.follows_started = Counter(
            "itwin_worker_job_follows_started_total",
            "Jobs this process started following; followed jobs now, across the fleet: "
            "sum(started) - sum(ended).",
            registry=registry,
        )
        self.follows_ended = Counter(
            "itwin_worker_job_follows_ended_total",
            "Followed jobs whose following ended (terminal event published), by event type.",
            ["event"],
            registry=registry,
        )
        for priority in PRIORITIES:
            self.limiter_waiting.labels(priority)
            self.budget_used.labels(priority)
        self.retries = Counter(
            "itwin_worker_api_retries_total",
            "API calls repeated, by reason: transient, rate_limited, token_refresh.",
            ["reason"],
            registry=registry,
        )
        self.token_fetches = Counter(
            "itwin_worker_token_fetches_total",
            "Access-token fetches from the token endpoint, by outcome: success, failure.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("success", "failure"):
            # Both series from the start, so an alert on failures sees a zero before the first.
            self.token_fetches.labels(outcome)
        self.rate_limited = Counter(
            "itwin_worker_api_rate_limited_total", "429 answers from the API.", registry=registry
        )

        self.dependency_down = Gauge(
            "itwin_worker_dependency_down",
            "1 while a dependency is unavailable and commands wait in their queues: redis "
            "(does not answer), api or token_endpoint (circuit breaker open).",
            ["dependency"],
            registry=registry,
        )

    def routing_key(self, routing_key: str) -> str:
        return routing_key if routing_key in self._known else "unknown"

    def render(self) -> bytes:
        return generate_latest(self.registry)
