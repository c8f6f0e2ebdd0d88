"""A dispatcher that answers at once: the cost of the agent loop itself (scenario 4)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Outcome

_OK = Outcome("OK", 0)


class NullDispatcher:
    """Each call awaits a future resolved on the next loop iteration, as a real result
    arriving from elsewhere would be."""

    name = "null"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def call(
        self, tool: str, arguments: Mapping[str, Any], *, agent_id: str, select: Sequence[str]
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        loop.call_soon(future.set_result, _OK)
        return await future

    def counters(self) -> dict[str, float]:
        return {}
