"""The circuit breaker's state machine, on an injected clock (no I/O)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from service.breaker import (
    BreakerPolicy,
    BreakerState,
    LocalBreaker,
    Verdict,
    admit,
    failed,
    succeeded,
)
from service.metrics import Metrics
from service.outages import DependencyDown

POLICY = BreakerPolicy(failures=3, initial=1.0, maximum=4.0, probe_lease=30.0)


def opened(now: float = 0.0) -> BreakerState:
    state = BreakerState()
    for _ in range(POLICY.failures):
        state = failed(POLICY, state, now, probe=False)
    return state


def test_a_run_of_failures_opens_it_and_fewer_do_not() -> None:
    state = BreakerState()
    for _ in range(POLICY.failures - 1):
        state = failed(POLICY, state, 0.0, probe=False)
    assert not state.open
    assert admit(POLICY, state, 0.0, "a")[0] == "closed"
    state = failed(POLICY, state, 0.0, probe=False)
    assert state.open
    assert admit(POLICY, state, 0.5, "a")[:2] == ("open", 0.5)


def test_a_success_ends_the_run() -> None:
    state = failed(POLICY, failed(POLICY, BreakerState(), 0.0, False), 0.0, False)
    state = succeeded()
    for _ in range(POLICY.failures - 1):
        state = failed(POLICY, state, 0.0, probe=False)
    assert not state.open


def test_one_probe_at_a_time_once_it_is_due() -> None:
    state = opened()
    assert admit(POLICY, state, 0.99, "a")[0] == "open"
    verdict, _, state = admit(POLICY, state, 1.0, "a")
    assert verdict == "probe"
    assert admit(POLICY, state, 1.0, "b")[0] == "open", "a second caller waits for the probe"
    assert admit(POLICY, state, 1.0, "a")[0] == "probe", "the prober asking again keeps it"
    verdict, seconds, _ = admit(POLICY, state, 5.0, "b")
    assert (verdict, seconds) == ("open", 26.0), "a silent probe holds the others its lease"


def test_failed_probes_double_the_interval_up_to_the_cap() -> None:
    state, now, waits = opened(), 0.0, []
    for _ in range(4):
        now = state.next_probe
        verdict, _, state = admit(POLICY, state, now, "p")
        assert verdict == "probe"
        state = failed(POLICY, state, now, probe=True)
        waits.append(state.next_probe - now)
    assert waits == [2.0, 4.0, 4.0, 4.0]


def test_failures_of_calls_sent_before_the_opening_change_nothing() -> None:
    state = opened()
    assert failed(POLICY, state, 0.5, probe=False) == state


def test_the_first_success_closes_it() -> None:
    state = opened()
    _, _, state = admit(POLICY, state, 1.0, "p")
    state = succeeded()
    assert admit(POLICY, state, 1.0, "x")[0] == "closed"


async def test_local_breaker_refuses_while_open_and_reports_its_state() -> None:
    now = [0.0]
    metrics = Metrics()
    breaker = LocalBreaker("api", POLICY, metrics, clock=lambda: now[0])
    permit = await breaker.admit()
    assert not permit.probe
    for _ in range(POLICY.failures):
        opened_now = await breaker.failed(permit)
    assert opened_now
    assert breaker.is_open
    assert await breaker.check()
    assert (
        metrics.registry.get_sample_value("itwin_worker_dependency_down", {"dependency": "api"})
        == 1
    )
    with pytest.raises(DependencyDown):
        await breaker.admit()
    now[0] = 1.0
    probe = await breaker.admit()
    assert probe.probe
    with pytest.raises(DependencyDown):
        await breaker.admit()
    await breaker.succeeded(probe)
    assert not breaker.is_open
    assert (
        metrics.registry.get_sample_value("itwin_worker_dependency_down", {"dependency": "api"})
        == 0
    )
    assert not (await breaker.admit()).probe


class CountingBreaker(LocalBreaker):
    """A local breaker that counts its store operations (a shared store's round trips)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__("api", POLICY, Metrics(), clock=clock)
        self.asked: list[str] = []

    async def _operate(self, mode: str, caller: str, probe: bool) -> tuple[Verdict, float]:
        self.asked.append(mode)
        return await super()._operate(mode, caller, probe)


async def test_a_breaker_seen_closed_admits_without_asking_until_its_recheck_or_a_failure() -> None:
    now = [0.0]
    breaker = CountingBreaker(lambda: now[0])
    for _ in range(10):
        await breaker.admit()
    assert breaker.asked == ["admit"], "asked once, then admitted from what it saw"
    now[0] = POLICY.closed_recheck + 0.01
    permit = await breaker.admit()
    assert breaker.asked == ["admit", "admit"]
    await breaker.failed(permit)
    await breaker.admit()
    await breaker.admit()
    assert breaker.asked == ["admit", "admit", "failure", "admit", "admit"], (
        "after a failure of its own every call asks, until a success resets the run"
    )
    await breaker.succeeded(permit)
    await breaker.admit()
    await breaker.admit()
    assert breaker.asked[-1] == "success", "its last admits saw it closed: no need to ask"
