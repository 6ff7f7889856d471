"""Everything one simulator instance remembers: knobs, tokens, limits, faults and objects.

All of it is touched only from the server's event loop, and no handler awaits between reading
and writing it, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from dataclasses import dataclass

from .config import SimulatorConfig
from .models import Application, Job, Repository, Workspace
from .ratelimit import ClientLimiter
from .requestlog import RecordedRequest, RequestLog

STORM_PATH = "/_simulator/storm"


@dataclass(slots=True)
class IssuedToken:
    client_id: str
    expires_at: float
    """`time.monotonic()` deadline, so wall-clock jumps do not expire or revive tokens."""


@dataclass(slots=True)
class Storm:
    until: float
    """`time.monotonic()` end of the storm."""
    retry_after: int | None
    """What every 429 of the storm says; None means the storm's remaining time."""


class SimulatorState:
    """The mutable side of the simulator; `reset()` brings it back to how it started."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.initial_config = config
        self.closing = asyncio.Event()
        """Set when the server shuts down, so hung requests stop holding it open."""
        self.config = config
        self.log = RequestLog(config.request_log_limit)
        self.tokens: dict[str, IssuedToken] = {}
        self.limiter = self._limiter(config)
        self.storm: Storm | None = None
        self.workspaces: dict[str, Workspace] = {}
        self.jobs: dict[str, Job] = {}
        self.repositories: dict[tuple[str, str], Repository] = {}
        """Keyed by (iTwin id, uri): the pair the API keeps unique."""
        self.applications: dict[tuple[str, str], Application] = {}
        """Keyed by (displayName, version): the pair the API keeps unique."""

    @staticmethod
    def _limiter(config: SimulatorConfig) -> ClientLimiter | None:
        if config.rate_limit_per_second is None:
            return None
        return ClientLimiter(config.rate_limit_per_second, config.rate_limit_burst)

    def reset(self) -> None:
        self.set_config(self.initial_config)
        self.limiter = self._limiter(self.config)
        self.log.clear()
        self.tokens.clear()
        self.storm = None
        self.workspaces.clear()
        self.jobs.clear()
        self.repositories.clear()
        self.applications.clear()

    def set_config(self, config: SimulatorConfig) -> None:
        old = self.config
        self.config = config
        if (config.rate_limit_per_second, config.rate_limit_burst) != (
            old.rate_limit_per_second,
            old.rate_limit_burst,
        ):
            self.limiter = self._limiter(config)
        self.log.resize(config.request_log_limit)

    def issue_token(self, client_id: str) -> str:
        token = secrets.token_urlsafe(32)
        expires_at = time.monotonic() + self.config.token_lifetime_seconds
        self.tokens[token] = IssuedToken(client_id, expires_at)
        return token

    def expire_tokens(self) -> int:
        for issued in self.tokens.values():
            issued.expires_at = -math.inf
        return len(self.tokens)

    def client_of(self, token: str, now: float) -> str | None:
        """The client a token was issued to, if it is ours and still valid."""
        issued = self.tokens.get(token)
        if issued is None or issued.expires_at <= now:
            return None
        return issued.client_id

    def start_storm(self, seconds: float, retry_after: int | None) -> RecordedRequest:
        self.storm = Storm(time.monotonic() + seconds, retry_after)
        started = time.time()
        return self.log.add(
            RecordedRequest(
                t=started,
                method="POST",
                path=STORM_PATH,
                kind="storm",
                until=started + seconds,
                retry_after=retry_after,
            )
        )

    def storm_retry_after(self, now: float) -> int | None:
        """The retry-after to answer with if a storm is on at `now`, else None."""
        storm = self.storm
        if storm is None:
            return None
        if now >= storm.until:
            self.storm = None
            return None
        if storm.retry_after is not None:
            return storm.retry_after
        return max(1, math.ceil(storm.until - now))
