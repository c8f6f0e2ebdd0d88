"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .._runs.record import Run
from .._types import ToolInfo

__all__ = ["EventOut", "RunAccepted", "RunCreate", "RunOut", "ToolOut"]


class RunCreate(BaseModel):
    """A task for an agent, with optional limits (defaults suit interactive use)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=20_000, description="What the agent should do.")
    system_prompt: str | None = Field(default=None, max_length=20_000)
    tools: list[str] | None = Field(
        default=None,
        max_length=256,
        description="Tools the run may use, by name; default: all the sidecar serves.",
    )
    max_steps: int = Field(default=10, ge=1, le=100, description="Planner steps at most.")
    max_tool_calls_per_step: int = Field(default=8, ge=1, le=64)
    deadline_s: float = Field(
        default=120.0, gt=0, le=3600, description="Wall-clock budget of the whole run."
    )


class EventOut(BaseModel):
    seq: int
    type: str
    t: float = Field(description="Seconds since the run was created.")
    data: dict[str, Any]


class RunOut(BaseModel):
    id: str
    state: str = Field(description="pending, running, succeeded, failed, cancelled, timed_out")
    stop_reason: str | None
    task: str
    answer: str | None
    error: str | None
    steps: int
    tool_calls: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    events: list[EventOut] | None = None

    @classmethod
    def of(cls, run: Run, *, events: bool) -> RunOut:
        out = cls.model_validate(run.summary())
        if events:
            out.events = [EventOut.model_validate(e.as_dict()) for e in run.events]
        return out


class RunAccepted(BaseModel):
    id: str
    state: str
    links: dict[str, str]

    @classmethod
    def of(cls, run: Run) -> RunAccepted:
        base = f"/v1/runs/{run.id}"
        return cls(
            id=run.id,
            state=run.state.value,
            links={"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"},
        )


class ToolOut(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    timeout_ms: int
    rate_limits: list[dict[str, Any]]

    @classmethod
    def of(cls, tool: ToolInfo) -> ToolOut:
        return cls(
            name=tool.name,
            description=tool.description,
            input_schema=tool.input_schema,
            output_schema=tool.output_schema,
            timeout_ms=tool.timeout_ms,
            rate_limits=[
                {
                    "scope": r.scope,
                    "rate": r.rate,
                    "period_ms": r.period_ms,
                    "burst": r.burst,
                    "on_limit": r.on_limit,
                }
                for r in tool.rate_limits
            ],
        )
