"""tandem's brain: agents that plan in Python and run every tool call through the sidecar.

The public surface is re-exported here (``__all__``; a test pins it):

* the sidecar client: :class:`SidecarClient`, :class:`ClientOptions`, its results
  (:class:`ToolResult`, :class:`Status`, ...);
* agent runs: :class:`Brain` (client + planner + runs + metrics), :class:`RunSpec`,
  :class:`RunState`;
* planners: :class:`OpenAIPlanner`, :class:`LocalPlanner`, :class:`RouterPlanner`, and
  what a planner of your own implements (:class:`Planner`, :class:`PlanningState`,
  :class:`Step`, :class:`ToolCallRequest`, :class:`Observation`);
* local inference: :class:`DynamicBatcher` and :class:`BatcherOptions`;
* one exception tree under :class:`BrainError` (drawn in ``_exceptions.py``).

Everything else is private. The layout, in the order a call travels::

    cli.py              the `brain` command: serve, run, tools
    _api/               the HTTP API: one router per resource, models.py, app.py,
                        server.py (uvicorn, and the drain on SIGTERM)
    _brain.py           Brain: the long-lived objects of a process, started and stopped together
    _runs/              record.py (a run's record and events), manager.py (admission, drain)
    _catalog.py         ToolCatalog: the sidecar's tools, cached
    _agent.py           the agent loop: plan, call tools concurrently, observe, repeat
    _planners/          base.py (the protocol), openai.py, local.py, router.py, factory.py
    _hosting.py         HostedModel: load a local model on a thread, warm it up, batch it
    _embedding.py       SentenceEmbedder (the router's model), with an async LRU cache
    _batcher.py         DynamicBatcher: many callers' items, one model call at a time
    _client.py          SidecarClient: every tool call over one Dispatch stream
    _backoff.py         reconnect delays (exponential, full jitter)
    _types.py           ToolResult, Status, ToolInfo, ...
    _exceptions.py      the exception tree; gRPC errors translated in one place
    _metrics.py         Prometheus metrics (each Brain has its own registry)
    _logging.py         text or JSON log lines
    _proto/             generated gRPC stubs of proto/dispatch/v1

Importing ``brain`` does not import torch; the planners that run a model load it when
they start.
"""

from ._batcher import BatcherOptions, DynamicBatcher
from ._brain import Brain, BrainOptions
from ._client import ClientOptions, SidecarClient
from ._exceptions import (
    AdmissionRefused,
    BatcherClosed,
    BatcherError,
    BatcherOverloaded,
    BrainError,
    ClientClosed,
    PlannerError,
    PlannerOutputError,
    RunError,
    RunNotFound,
    SidecarError,
    SidecarUnavailable,
    ToolCallError,
)
from ._planners.base import Observation, Planner, PlanningState, Step, ToolCallRequest
from ._planners.local import LocalOptions, LocalPlanner
from ._planners.openai import OpenAIOptions, OpenAIPlanner
from ._planners.router import RouterPlanner
from ._runs.record import RunSpec, RunState
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
