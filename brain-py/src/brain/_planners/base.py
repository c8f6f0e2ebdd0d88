"""What a planner sees and proposes, and the protocol every planner implements.

A planner is stateless with respect to runs: the agent hands it a :class:`PlanningState`
(the task, the tools it may use, and every earlier step with its observations) and gets
back a :class:`Step`: tool calls to run concurrently, or a final answer. One planner
object serves every run in the process, so planners that run a model locally can batch
the requests of all agents together.

Planners::

    Planner (protocol)  base.py
    ├── OpenAIPlanner   openai.py   chat completions through the sidecar's `llm` tool
    ├── LocalPlanner    local.py    a local causal LM, grammar-constrained, continuous batching
    └── RouterPlanner   router.py   sentence embeddings pick a tool, the schema guides
                                    filling its arguments from the task
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .._types import ToolInfo

__all__ = [
    "Observation",
    "Planner",
    "PlanningState",
    "Step",
    "ToolCallRequest",
    "Turn",
    "parse_arguments",
]

_call_ids = itertools.count(1)


def new_call_id(prefix: str = "call") -> str:
    """An id for a tool call a planner proposes (LLM APIs supply their own)."""
    return f"{prefix}_{next(_call_ids)}"


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """One tool call a planner proposed.

    ``arguments`` is ``None`` when the model's arguments could not be used (not JSON,
    not an object); ``error`` then says why and ``raw_arguments`` keeps what it sent.
    The agent answers such a call with an observation instead of calling the tool.
    """

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str = ""
    error: str = ""


def parse_arguments(call_id: str, name: str, raw: str | dict[str, Any] | None) -> ToolCallRequest:
    """Parse a model's tool arguments defensively: never raise, explain instead."""
    if isinstance(raw, dict):
        return ToolCallRequest(call_id, name, raw, orjson.dumps(raw).decode())
    text = raw or ""
    if not text.strip():
        return ToolCallRequest(call_id, name, {}, text)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return ToolCallRequest(
            call_id, name, None, text, f"arguments are not valid JSON ({exc}); send a JSON object"
        )
    if not isinstance(value, dict):
        kind = type(value).__name__
        return ToolCallRequest(
            call_id, name, None, text, f"arguments must be a JSON object, not {kind}"
        )
    return ToolCallRequest(call_id, name, value, text)


@dataclass(frozen=True, slots=True)
class Step:
    """A planner's proposal: tool calls to run concurrently, or the final answer.

    ``text`` is what the model said alongside its tool calls (kept in the transcript).
    """

    tool_calls: tuple[ToolCallRequest, ...] = ()
    final: str | None = None
    text: str = ""

    @classmethod
    def answer(cls, final: str) -> Step:
        return cls(final=final)

    @classmethod
    def calls(cls, *calls: ToolCallRequest, text: str = "") -> Step:
        return cls(tool_calls=tuple(calls), text=text)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the agent saw for one proposed tool call; every call gets exactly one.

    ``status`` is the lower-case sidecar status (``ok``, ``invalid_arguments``, ...) or
    ``malformed`` (unusable arguments, not sent) or ``refused`` (not allowed, or over
    the per-step limit, not sent). ``content`` is the text shown to the model: the
    result JSON when OK, else a JSON object explaining the failure.
    """

    call: ToolCallRequest
    status: str
    content: str
    result: Any = None
    duration_s: float = 0.0
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True, slots=True)
class Turn:
    """One executed step: what the planner proposed and what the agent observed."""

    step: Step
    observations: tuple[Observation, ...]


@dataclass(frozen=True, slots=True)
class PlanningState:
    """Everything a planner needs to propose the next step of a run."""

    run_id: str
    task: str
    tools: Sequence[ToolInfo]
    system_prompt: str | None = None
    history: Sequence[Turn] = field(default_factory=tuple)
    #: Seconds left before the run's deadline; a planner bounds its own waits by it.
    time_left: float = 60.0
    #: The most tool calls the agent will run from one step.
    max_tool_calls: int = 8

    @property
    def step_index(self) -> int:
        return len(self.history)


class Planner(Protocol):
    """Proposes the next step of a run. One instance serves every run in the process."""

    #: Short name for metrics and logs: ``openai``, ``local``, ``router``, ...
    name: str

    @property
    def ready(self) -> bool:
        """True once models are loaded and warmed up (``/readyz`` waits for it)."""
        ...

    @property
    def reserved_tools(self) -> frozenset[str]:
        """Sidecar tools the planner uses itself; never shown to models or run by agents."""
        ...

    async def start(self) -> None:
        """Load models and warm up. Called once before the first run."""
        ...

    async def aclose(self) -> None:
        """Release models, threads and batchers."""
        ...

    async def plan(self, state: PlanningState) -> Step:
        """The next step; raises :class:`~brain.PlannerError` when there is none."""
        ...


DEFAULT_SYSTEM_PROMPT = (
    "You are an agent that completes the user's task with the tools provided. "
    "Call tools when you need facts or computation; several independent calls may be made "
    "at once. When a tool reports an error or invalid arguments, correct the call. "
    "When you have what you need, reply with the final answer only."
)
