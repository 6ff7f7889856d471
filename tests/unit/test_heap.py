"""The running worker's collector settings: what start-up built frozen, young collections spaced."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service import heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_settle_freezes_the_start_up_heap_and_spaces_young_collections() -> None:
    _, middle, oldest = gc.get_threshold()
    survivor: list[object] = []
    survivor.append(survivor)  # a cycle: only the collector could free it
    heap.settle()
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, middle, oldest)
    assert gc.get_freeze_count() > 0
    # Frozen: in no generation the collector walks.
    assert all(found is not survivor for found in gc.get_objects())
