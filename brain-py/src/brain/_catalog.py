"""``ToolCatalog``: the sidecar's tools (its ``ListTools`` answer), cached.

Planners and the API read it on every run; :class:`~brain._brain.Brain` refreshes it in
the background. Tools a planner keeps for itself (the OpenAI planner's ``llm``) are
hidden: never offered to a run, never listed by ``GET /v1/tools``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ._types import ToolInfo

__all__ = ["ToolCatalog"]


class ToolCatalog:
    """The sidecar's tools, fetched once and refreshed on demand."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list[ToolInfo]]],
        *,
        hidden: frozenset[str] = frozenset(),
    ) -> None:
        self._fetch = fetch
        #: Tools that planners use themselves (e.g. ``llm``); never offered to runs.
        self.hidden = hidden
        self._tools: dict[str, ToolInfo] = {}
        self.loaded = False

    async def refresh(self) -> list[ToolInfo]:
        tools = await self._fetch()
        self._tools = {t.name: t for t in tools if t.name not in self.hidden}
        self.loaded = True
        return self.tools

    @property
    def tools(self) -> list[ToolInfo]:
        return list(self._tools.values())

    def names(self) -> set[str]:
        return set(self._tools)

    def select(self, allow: Sequence[str] | None) -> list[ToolInfo]:
        """The tools a run may use: all, or those named in ``allow`` (unknown names skipped)."""
        if allow is None:
            return self.tools
        return [self._tools[n] for n in dict.fromkeys(allow) if n in self._tools]
