"""Everything one simulator instance remembers: knobs, tokens, limits, faults and objects.

All of it is touched only from the server's event loop, and no handler awaits between reading
and writing it, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from .config import SimulatorConfig
from .models import Application, Job, ModelingJob, Repository, Workspace
from .ratelimit import ClientLimiter
from .requestlog import RecordedRequest, RequestLog
from .tokens import TokenSigner

STORM_PATH = "/_simulator/storm"


@dataclass(slots=True)
class IssuedToken:
    """The server-side record of one access token, keyed by its `jti`.

    The JWT carries its own expiry; the record is what lets the admin API (and a reset) revoke
    a token that would still verify.
    """

    client_id: str
    expires_at: float
    """The token's `exp` (`time.time()` seconds), to forget the record once it is useless."""
    revoked: bool = False


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
        self.signer = TokenSigner()
        """Generated once per run, kept across resets: only the token records are forgotten."""
        self.tokens: dict[str, IssuedToken] = {}
        self.limiter = self._limiter(config)
        self.storm: Storm | None = None
        self.workspaces: dict[str, Workspace] = {}
        self.jobs: dict[str, Job] = {}
        self.modeling_jobs: dict[str, ModelingJob] = {}
        """Reality Modeling v2 jobs, by id, in the order they were created (the list's)."""
        self.modeling_jobs_created = 0
        """Never goes down, so each v2 job's place in the list's pages is its own."""
        self.repositories: dict[str, Repository] = {}
        """By id, in the order they were added."""
        self.repository_uris: dict[tuple[str, str], str] = {}
        """(iTwin id, uri) -> repository id: the pair the API keeps unique."""
        self.applications: dict[str, Application] = {}
        """By id, in the order they were created (the order of the list's pages)."""
        self.application_names: dict[tuple[str, str], str] = {}
        """(displayName, version) -> application id: the pair the API keeps unique."""
        self.applications_created = 0
        """Never goes down, so each application's place in the pages is its own."""
        self.drops_pending = 0
        """Answers still to drop, whatever `drop_after_rate` says (`/_simulator/drop-next`)."""

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
        self.modeling_jobs.clear()
        self.modeling_jobs_created = 0
        self.repositories.clear()
        self.repository_uris.clear()
        self.applications.clear()
        self.application_names.clear()
        self.applications_created = 0
        self.drops_pending = 0

    def set_config(self, config: SimulatorConfig) -> None:
        old = self.config
        self.config = config
        if (config.rate_limit_per_second, config.rate_limit_burst) != (
            old.rate_limit_per_second,
            old.rate_limit_burst,
        ):
            self.limiter = self._limiter(config)
        self.log.resize(config.request_log_limit)

    def drop_answer(self, draw: float) -> bool:
        """Whether the answer of a request just processed is to be dropped; `draw` in [0, 1)."""
        if self.drops_pending > 0:
            self.drops_pending -= 1
            return True
        return draw < self.config.drop_after_rate

    def issuer_for(self, base_url: str) -> str:
        """The issuer of tokens asked for (and presented) at `base_url`, the request's root."""
        return self.config.issuer or base_url.rstrip("/")

    def issue_token(self, issuer: str, client_id: str, scope: str) -> str:
        now = time.time()
        for jti in [jti for jti, issued in self.tokens.items() if issued.expires_at < now]:
            del self.tokens[jti]
        signed = self.signer.sign(issuer, client_id, scope, self.config.token_lifetime_seconds)
        self.tokens[signed.jti] = IssuedToken(client_id, signed.expires_at)
        return signed.token

    def expire_tokens(self) -> int:
        """Revoke every token issued so far (they still verify, but are refused)."""
        for issued in self.tokens.values():
            issued.revoked = True
        return len(self.tokens)

    def client_of(self, token: str, issuer: str | None) -> str | None:
        """The client a token was issued to, if it verifies (for `issuer`, when one is fixed)
        and is not revoked."""
        claims = self.signer.verify(token, issuer)
        issued = self.tokens.get(claims.jti) if claims is not None else None
        if issued is None or issued.revoked:
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
