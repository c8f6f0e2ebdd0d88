"""Exceptions raised by the brain's sidecar client.

A tool call that *reaches* the sidecar never raises: it returns a
:class:`~brain.ToolResult` whose ``status`` says what happened (OK, INVALID_ARGUMENTS,
RATE_LIMITED, ...). Exceptions are for the transport and the client itself::

    BrainError
    ├── SidecarError                 the sidecar could not be asked
    │   ├── SidecarUnavailable       no connection, or the stream broke with calls pending
    │   └── ClientClosed             the client was closed before or during the call
    ├── ToolCallError                raised by ToolResult.raise_for_status() on a non-OK result
    ├── BatcherError                 a model batch could not run        (_errors.py)
    ├── PlannerError                 the planner produced no usable step (_errors.py)
    └── RunError                     the run registry refused a request  (_errors.py)

gRPC errors are translated into this tree in one place (``_client._map_grpc_errors``),
always chained with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._types import ToolResult

__all__ = [
    "BrainError",
    "ClientClosed",
    "SidecarError",
    "SidecarUnavailable",
    "ToolCallError",
]


class BrainError(Exception):
    """Base class of every exception the brain raises on purpose."""


class SidecarError(BrainError):
    """The sidecar could not be asked, or did not answer."""


class SidecarUnavailable(SidecarError):
    """No connection to the sidecar, or the stream broke while the call was pending.

    The call may or may not have reached the upstream; retry only idempotent tools.
    The client reconnects by itself; new calls wait for the connection up to their timeout.
    """


class ClientClosed(SidecarError):
    """The client was closed before the call could complete."""


class ToolCallError(BrainError):
    """A tool call finished with a status other than OK (see ``result``)."""

    def __init__(self, result: ToolResult) -> None:
        super().__init__(f"{result.tool_hint}{result.status.name}: {result.error}")
        self.result = result
