"""Every exception the brain raises on purpose, in one tree.

A tool call that *reaches* the sidecar never raises: it returns a
:class:`~brain.ToolResult` whose ``status`` says what happened (OK, INVALID_ARGUMENTS,
RATE_LIMITED, ...). Exceptions are for the transport, the client itself, and the agent
runtime around it::

    BrainError                       base of everything below
    ├── SidecarError                 the sidecar could not be asked
    │   ├── SidecarUnavailable       no connection, or the stream broke with calls pending
    │   └── ClientClosed             the client was closed before or during the call
    ├── ToolCallError                raised by ToolResult.raise_for_status() on a non-OK result
    ├── BatcherError                 a model batch could not be run
    │   ├── BatcherOverloaded        the batcher's queue is full; try again later
    │   └── BatcherClosed            the batcher was closed
    ├── PlannerError                 the planner could not produce a step
    │   └── PlannerOutputError       the model answered, but not with a usable step
    └── RunError                     the run registry refused a request
        ├── AdmissionRefused         too many runs in flight, or draining (retry_after_s)
        └── RunNotFound              no run has this id

gRPC errors are translated into this tree in one place, :func:`map_grpc_errors`, always
chained with ``raise ... from exc``. The HTTP API maps the run errors to status codes in
one place too (``_api/app.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
import grpc.aio

if TYPE_CHECKING:
    from ._types import ToolResult

__all__ = [
    "AdmissionRefused",
    "BatcherClosed",
    "BatcherError",
    "BatcherOverloaded",
    "BrainError",
    "ClientClosed",
    "PlannerError",
    "PlannerOutputError",
    "RunError",
    "RunNotFound",
    "SidecarError",
    "SidecarUnavailable",
    "ToolCallError",
    "map_grpc_errors",
]


class BrainError(Exception):
    """Base class of every exception the brain raises on purpose."""


# ---------------------------------------------------------------- the sidecar client


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


@contextlib.contextmanager
def map_grpc_errors(target: str) -> Iterator[None]:
    """Translate gRPC errors into this tree (the one place that does)."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.CANCELLED:
            raise ClientClosed(f"call to {target} cancelled: {exc.details()}") from exc
        raise SidecarUnavailable(f"{target}: {code.name}: {exc.details()}") from exc


# ---------------------------------------------------------------- the agent runtime


class BatcherError(BrainError):
    """A batch could not be run (the model failed or broke the one-output-per-input rule)."""


class BatcherOverloaded(BatcherError):
    """The batcher's queue is at its bound; the item was refused at once."""


class BatcherClosed(BatcherError):
    """The batcher was closed before the item could run."""


class PlannerError(BrainError):
    """The planner could not produce the next step (its model unreachable, refused, ...)."""


class PlannerOutputError(PlannerError):
    """The model answered with something that is neither tool calls nor a final answer."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        #: The model's raw output, for the run's event record.
        self.output = output


class RunError(BrainError):
    """The run registry refused a request."""


class AdmissionRefused(RunError):
    """No new run admitted: too many in flight, or the process is draining."""

    def __init__(self, message: str, *, retry_after_s: int, draining: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.draining = draining


class RunNotFound(RunError):
    """No run has this id (it never existed, or was evicted from the finished-run history)."""
