"""The record of what reached the simulator, for tests and benchmarks to read back.

Entries are recorded at arrival and completed when the answer starts, so a hung request is
visible (status null) while it hangs.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

RequestKind = Literal["api", "token", "oidc", "storm"]
ACCEPT_LOGGED = 128
"""Characters of a request's Accept header the log keeps."""


@dataclass(slots=True)
class RecordedRequest:
    """One request (kind api, token, or oidc: discovery, JWKS, authorize), or the window of a
    429 storm (kind storm, with `until`)."""

    t: float
    """Arrival (or storm start) as `time.time()`."""
    method: str
    path: str
    kind: RequestKind
    status: int | None = None
    until: float | None = None
    retry_after: int | None = None
    traceparent: str | None = None
    """The W3C trace context the request carried."""
    accept: str | None = None
    """Its Accept header, so a test can tell which API version a client asked for. These two
    are the only headers logged: never a token."""
    body_digest: str | None = None
    """The first 16 hex digits of the SHA-256 of the request's body, when it had one: tests tell
    a request sent twice from two requests without reading what the bodies say."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "t": self.t,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "kind": self.kind,
        }
        if self.traceparent is not None:
            data["traceparent"] = self.traceparent
        if self.body_digest is not None:
            data["body_digest"] = self.body_digest
        if self.accept is not None:
            data["accept"] = self.accept
        if self.kind == "storm":
            data["until"] = self.until
            data["retry_after"] = self.retry_after
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordedRequest:
        return cls(**data)


class RequestLog:
    """A bounded, append-only list of entries (the oldest fall off past the limit)."""

    def __init__(self, limit: int) -> None:
        self._entries: deque[RecordedRequest] = deque(maxlen=limit)

    def record(
        self,
        method: str,
        path: str,
        kind: RequestKind,
        traceparent: str | None = None,
        accept: str | None = None,
    ) -> RecordedRequest:
        """Log an arrival now; the caller fills in the status when it answers."""
        entry = RecordedRequest(
            time.time(), method, path, kind, traceparent=traceparent, accept=accept
        )
        return self.add(entry)

    def add(self, entry: RecordedRequest) -> RecordedRequest:
        self._entries.append(entry)
        return entry

    def clear(self) -> None:
        self._entries.clear()

    def resize(self, limit: int) -> None:
        if limit != self._entries.maxlen:
            self._entries = deque(self._entries, maxlen=limit)

    def to_json(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [entry.to_json() for entry in self._entries if kind is None or entry.kind == kind]
