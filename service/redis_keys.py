"""Every Redis key the worker uses, built in one place from one prefix.

A deployment (or a test run) that picks its own prefix can share a Redis with others without
one key of theirs meeting one of ours.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str

    @property
    def limiter(self) -> str:
        """The GCRA state of the API budget shared by every replica."""
        return f"{self.prefix}:limiter"

    def outcome(self, command_id: str) -> str:
        """The recorded event of a finished command, replayed when it comes again."""
        return f"{self.prefix}:outcome:{command_id}"

    def lease(self, command_id: str) -> str:
        """Held while one replica works on a command, so another does not start it too."""
        return f"{self.prefix}:lease:{command_id}"
