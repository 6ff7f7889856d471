"""Backoff between retries: full jitter under an exponential ceiling that stops at the maximum."""

from __future__ import annotations

from service.api import RetryPolicy, backoff


def ceiling(failures: int, policy: RetryPolicy) -> float:
    """The upper end of the range `backoff` draws from."""
    return backoff(failures, policy, draw=lambda low, high: high)


def test_the_ceiling_doubles_from_the_initial_delay_up_to_the_maximum() -> None:
    policy = RetryPolicy(initial=0.5, maximum=3.0)
    assert [ceiling(n, policy) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_the_draw_starts_at_zero() -> None:
    assert backoff(3, RetryPolicy(), draw=lambda low, high: low) == 0.0


def test_a_huge_failure_count_stays_at_the_maximum() -> None:
    assert ceiling(10_000, RetryPolicy(maximum=10.0)) == 10.0


def test_real_draws_stay_in_range() -> None:
    policy = RetryPolicy(initial=0.5, maximum=10.0)
    draws = [backoff(4, policy) for _ in range(200)]
    assert all(0.0 <= d <= 4.0 for d in draws)
    assert max(draws) > 2.0  # jittered over the whole range, not a fixed delay
