"""Every Redis key the worker uses, built in one place from one prefix.

A deployment (or a test run) that picks its own prefix can share a Redis with others without
one key of theirs meeting one of ours: every key starts with `<prefix>:`, and ACLs can grant
`~<prefix>:*`.

Redis Cluster keeps a key in the hash slot of its hash tag, the text between its first `{` and
the first `}` after it (the whole key when that text is empty or absent), and a script may only
touch keys of one slot. So the keys one script touches share a tag:

- a command's outcome, lease and mark of a sent request: `<prefix>:outcome:{<prefix>:<id>}`,
  `<prefix>:lease:{<prefix>:<id>}` and `<prefix>:sent:{<prefix>:<id>}`. The prefix has no
  braces (settings), so the tag opens at the brace we put after `outcome:`, `lease:` or
  `sent:`; everything from there on is the same text in the three keys, so wherever the first
  `}` falls (in the id, which is producer input, or the one we put last) they get the same tag,
  and never an empty one: it starts with the prefix. An id with a `}` only moves its records to
  another slot. The id is the whole rest of the key, so two ids never share a key, and the text
  before the brace tells outcome, lease, mark and budget apart;
- the budget's bucket state: one hash, `<prefix>:limiter:{<prefix>}`;
- each circuit breaker's state: one hash, `<prefix>:breaker:<name>:{<prefix>}` (the name is
  ours: `api`, `token_endpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str

    @property
    def limiter(self) -> str:
        """The GCRA state of the API budget shared by every replica."""
        return f"{self.prefix}:limiter:{{{self.prefix}}}"

    def outcome(self, command_id: str) -> str:
        """The recorded event of a finished command, replayed when it comes again."""
        return f"{self.prefix}:outcome:{{{self.prefix}:{command_id}}}"

    def lease(self, command_id: str) -> str:
        """Held while one replica works on a command, so another does not start it too."""
        return f"{self.prefix}:lease:{{{self.prefix}:{command_id}}}"

    def sent(self, command_id: str) -> str:
        """Set just before a request that is not safe to repeat leaves: an orphan so marked
        is concluded, never sent again."""
        return f"{self.prefix}:sent:{{{self.prefix}:{command_id}}}"

    def breaker(self, name: str) -> str:
        """The state of the circuit breaker in front of one dependency, shared by replicas."""
        return f"{self.prefix}:breaker:{name}:{{{self.prefix}}}"
