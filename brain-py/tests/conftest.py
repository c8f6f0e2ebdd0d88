"""Event loops for the brain's unit tests: asyncio's, and also uvloop's where a test
module asks for both (``BOTH_LOOPS``), because uvloop's transports are not asyncio's and
the brain runs on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

#: Modules whose every test runs on both loops.
BOTH_LOOPS = {"test_framed_transport", "test_api_protocol", "test_api_body"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.module is not None and item.module.__name__ in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
