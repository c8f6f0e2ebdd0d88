"""What every dispatcher offers the agents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..tools import ToolSpec


@dataclass(frozen=True, slots=True)
class Outcome:
    """A call's status (``OK`` or the name of what went wrong) and the result's size."""

    status: str
    result_bytes: int = 0


class Dispatcher(Protocol):
    """Runs tool calls for agents: input schema, HTTP GET, parse, output schema."""

    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def call(
        self, tool: str, arguments: Mapping[str, Any], *, agent_id: str, select: Sequence[str]
    ) -> Outcome: ...

    def counters(self) -> dict[str, float]:
        """Dispatcher-specific numbers for the report (e.g. frames sent)."""
        ...


def make_dispatcher(
    name: str,
    *,
    tools: Mapping[str, ToolSpec],
    upstream: str,
    sidecar: str,
    frames: str = "",
) -> Dispatcher:
    """The dispatcher called ``name``; ``upstream`` is nginx's base URL, ``sidecar`` the
    sidecar's gRPC target and ``frames`` its frames socket."""
    if name in ("tandem", "tandem-grpc", "tandem-unary"):
        from .tandem import TandemDispatcher

        return TandemDispatcher(
            name,
            sidecar,
            frames=frames if name == "tandem" else "",
            unary=name == "tandem-unary",
        )
    if name == "python-naive":
        from .naive import NaiveDispatcher

        return NaiveDispatcher(tools, upstream)
    if name == "python-tuned":
        from .tuned import TunedDispatcher

        return TunedDispatcher(tools, upstream)
    if name == "null":
        from .null import NullDispatcher

        return NullDispatcher()
    raise ValueError(f"unknown dispatcher {name!r}")
