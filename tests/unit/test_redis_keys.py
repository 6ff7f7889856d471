"""Redis Cluster hash slots of the worker's keys: each script's keys share one slot, whatever a
producer puts in a command id, and no two records ever share a key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from service.redis_keys import RedisKeys

KEYS = RedisKeys("itwin-worker")
# Braces and the separators of the key layout, in every order.
hostile_ids = st.text(alphabet="{}:ab", min_size=1, max_size=12) | st.text(min_size=1)


def test_plain_ids_spread_over_slots_and_keep_outcome_and_lease_together() -> None:
    slots = {key_slot(KEYS.outcome(f"command-{i}").encode()) for i in range(200)}
    assert len(slots) > 150
    for i in range(200):
        command_id = f"command-{i}"
        assert key_slot(KEYS.outcome(command_id).encode()) == key_slot(
            KEYS.lease(command_id).encode()
        )


def slots(command_id: str) -> set[int]:
    """The slots of one command's keys: its outcome, lease and mark of a sent request."""
    keys = (KEYS.outcome(command_id), KEYS.lease(command_id), KEYS.sent(command_id))
    return {key_slot(key.encode()) for key in keys}


@given(hostile_ids)
def test_an_id_with_braces_cannot_split_a_commands_keys(command_id: str) -> None:
    assert len(slots(command_id)) == 1


def test_ids_that_would_empty_or_end_the_tag_early_still_share_a_slot() -> None:
    """The naive layout `{<id>}` would hash `}x`'s two keys whole, into two slots."""
    for command_id in ["}", "}x", "{}", "}{", "{", "a}b{c}", "x}:lease:{y"]:
        assert len(slots(command_id)) == 1
    naive = [f"itwin-worker:{{{'}x'}}}:{kind}".encode() for kind in ("outcome", "lease")]
    assert key_slot(naive[0]) != key_slot(naive[1]), "the layout this one avoids"


@given(hostile_ids, hostile_ids)
def test_two_ids_never_share_a_key_nor_meet_the_budget(first: str, second: str) -> None:
    first_keys = {KEYS.outcome(first), KEYS.lease(first), KEYS.sent(first)}
    assert len(first_keys) == 3
    assert KEYS.limiter not in first_keys
    if first != second:
        assert first_keys.isdisjoint({KEYS.outcome(second), KEYS.lease(second), KEYS.sent(second)})


def test_every_key_starts_with_the_prefix_and_the_budget_is_tagged_by_it() -> None:
    other = RedisKeys("other-deployment")
    for keys in (KEYS, other):
        assert all(
            key.startswith(f"{keys.prefix}:")
            for key in (keys.limiter, keys.outcome("c"), keys.lease("c"), keys.sent("c"))
        )
    # The tags hold the prefix: two deployments' budgets are not tied to one slot.
    assert key_slot(KEYS.limiter.encode()) != key_slot(other.limiter.encode())


def test_each_breaker_has_its_own_key_tagged_by_the_prefix() -> None:
    api, token = KEYS.breaker("api"), KEYS.breaker("token_endpoint")
    assert len({api, token, KEYS.limiter}) == 3
    assert api.startswith("itwin-worker:")
    assert api.endswith("{itwin-worker}"), "the prefix is the hash tag"
    assert key_slot(api.encode()) == key_slot(b"itwin-worker")
