"""tandem's brain: agents that plan in Python and run every tool call through the sidecar.

The public surface is re-exported here; everything else is private (``_*`` modules):

* the sidecar client: :class:`SidecarClient`, its results and exceptions;
* agent runs: :class:`Brain` (client + planner + runs + metrics), :class:`RunSpec`,
  :class:`RunState`;
* planners: :class:`OpenAIPlanner`, :class:`LocalPlanner`, :class:`RouterPlanner`, and
  what a planner of your own implements (:class:`Planner`, :class:`PlanningState`,
  :class:`Step`, :class:`ToolCallRequest`, :class:`Observation`);
* local inference: :class:`DynamicBatcher` and :class:`BatcherOptions`.

Importing ``brain`` does not import torch; the planners that run a model load it when
they start.
"""

from ._batcher import BatcherOptions, DynamicBatcher
from ._client import ClientOptions, SidecarClient
from ._errors import (
    AdmissionRefused,
    BatcherClosed,
    BatcherError,
    BatcherOverloaded,
    PlannerError,
    PlannerOutputError,
    RunError,
    RunNotFound,
)
from ._exceptions import (
    BrainError,
    ClientClosed,
    SidecarError,
    SidecarUnavailable,
    ToolCallError,
)
from ._planner import Observation, Planner, PlanningState, Step, ToolCallRequest
from ._planner_local import LocalOptions, LocalPlanner
from ._planner_openai import OpenAIOptions, OpenAIPlanner
from ._planner_router import RouterPlanner
from ._run import RunSpec, RunState
from ._service import Brain, BrainOptions
from ._types import RateLimitInfo, Status, Timing, ToolInfo, ToolResult, Violation

__all__ = [
    "AdmissionRefused",
    "BatcherClosed",
    "BatcherError",
    "BatcherOptions",
    "BatcherOverloaded",
    "Brain",
    "BrainError",
    "BrainOptions",
    "ClientClosed",
    "ClientOptions",
    "DynamicBatcher",
    "LocalOptions",
    "LocalPlanner",
    "Observation",
    "OpenAIOptions",
    "OpenAIPlanner",
    "Planner",
    "PlannerError",
    "PlannerOutputError",
    "PlanningState",
    "RateLimitInfo",
    "RouterPlanner",
    "RunError",
    "RunNotFound",
    "RunSpec",
    "RunState",
    "SidecarClient",
    "SidecarError",
    "SidecarUnavailable",
    "Status",
    "Step",
    "Timing",
    "ToolCallError",
    "ToolCallRequest",
    "ToolInfo",
    "ToolResult",
    "Violation",
]
