"""The transport's tests run on both event loops: the worker runs on uvloop, whose transports
behave differently from asyncio's in details a protocol depends on."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
import uvloop
from pytest_asyncio.plugin import LoopFactory


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
