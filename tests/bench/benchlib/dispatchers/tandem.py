"""tandem: the brain's own client; the sidecar does HTTP, parsing and validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from brain import ClientOptions, SidecarClient, Status

from ..tools import CALL_TIMEOUT_S
from .base import Outcome


class TandemDispatcher:
    """``SidecarClient.call`` (coalesced frames) on the frames socket when ``frames`` is
    given (what the brain runs with in a pod) else on the gRPC stream, or ``invoke`` (one
    unary RPC per call).

    The result stays bytes: an agent that does not read the document never parses it,
    which is the design being measured.
    """

    def __init__(self, name: str, target: str, *, frames: str = "", unary: bool = False) -> None:
        self.name = name
        options = ClientOptions(frames_socket=frames or None)
        self._client = SidecarClient(target, options=options)
        self._unary = unary

    async def start(self) -> None:
        await self._client.wait_connected(30)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self, tool: str, arguments: Mapping[str, Any], *, agent_id: str, select: Sequence[str]
    ) -> Outcome:
        send = self._client.invoke if self._unary else self._client.call
        result = await send(
            tool, arguments, agent_id=agent_id, timeout=CALL_TIMEOUT_S, select=select
        )
        status = "OK" if result.status is Status.OK else result.status.name
        return Outcome(status, len(result.result_bytes))

    def counters(self) -> dict[str, float]:
        return {"frames_sent": self._client.frames_sent}
