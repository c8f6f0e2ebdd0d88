"""Exceptions of the agent runtime: batcher, planners, runs.

They extend the client's tree (``_exceptions.py``) under :class:`~brain.BrainError`::

    BrainError
    ├── SidecarError ...             (see _exceptions.py)
    ├── ToolCallError
    ├── BatcherError                 a model batch could not be run
    │   ├── BatcherOverloaded        the batcher's queue is full; try again later
    │   └── BatcherClosed            the batcher was closed
    ├── PlannerError                 the planner could not produce a step
    │   └── PlannerOutputError       the model answered, but not with a usable step
    └── RunError                     the run registry refused a request
        ├── AdmissionRefused         too many runs in flight, or draining (retry_after_s)
        └── RunNotFound              no run has this id
"""

from __future__ import annotations

from ._exceptions import BrainError

__all__ = [
    "AdmissionRefused",
    "BatcherClosed",
    "BatcherError",
    "BatcherOverloaded",
    "PlannerError",
    "PlannerOutputError",
    "RunError",
    "RunNotFound",
]


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
