"""The agent loop: plan, run the proposed tool calls concurrently, observe, repeat.

::

    ┌──► planner.plan(state) ──► final answer ──────────────────────► succeeded
    │        │ tool calls
    │        ▼
    │    each call, concurrently (at most max_tool_calls_per_step; the rest refused):
    │      unusable arguments ─► observation "malformed" (not sent)
    │      tool not allowed   ─► observation "refused"   (not sent)
    │      else SidecarClient.call ─► RATE_LIMITED? wait retry_after_ms, retry
    │                              ─► observation (ok / invalid_arguments + violations / ...)
    └──── every proposed call has exactly one observation

A run ends ``failed`` after ``max_steps`` steps without an answer, ``timed_out`` when its
deadline passes (the deadline bounds planning, tool calls and rate-limit waits), and
``cancelled`` when cancelled; cancelling the run's task cancels its tool calls in the
sidecar. The agent never raises for a run's failure: the run record says what happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ._exceptions import PlannerError, PlannerOutputError, SidecarError
from ._metrics import BrainMetrics
from ._planners.base import Observation, Planner, PlanningState, Step, ToolCallRequest, Turn
from ._runs.record import Run, RunState
from ._types import Status, ToolInfo, ToolResult

__all__ = ["Agent", "AgentOptions", "ToolCaller"]

log = logging.getLogger("brain.agent")


class ToolCaller(Protocol):
    """What the agent needs from :class:`~brain.SidecarClient` (tests pass fakes)."""

    async def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | bytes | None = None,
        *,
        agent_id: str = "",
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ToolResult: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentOptions:
    #: Retries of a RATE_LIMITED call (after ``retry_after_ms``) within the deadline.
    max_rate_limit_retries: int = 3
    #: Longest observation shown to the planner, in characters; longer ones are cut.
    max_observation_chars: int = 8_000
    #: Longest stretch of an observation kept in the run's event record.
    max_event_chars: int = 2_000


class Agent:
    """Runs :class:`~brain._runs.record.Run` records to completion with one planner and client."""

    def __init__(
        self,
        client: ToolCaller,
        planner: Planner,
        metrics: BrainMetrics,
        *,
        options: AgentOptions | None = None,
    ) -> None:
        self.client = client
        self.planner = planner
        self.metrics = metrics
        self.options = options or AgentOptions()

    async def run(self, run: Run, tools: Sequence[ToolInfo]) -> None:
        """Drive ``run`` to a final state. Returns normally whatever happens to the run."""
        run.start()
        allowed = {t.name: t for t in tools}
        try:
            async with asyncio.timeout_at(_loop_time(run.deadline)):
                await self._loop(run, allowed)
        except TimeoutError:
            run.record("error", message=f"deadline of {run.spec.deadline_s:g}s passed")
            run.finish(
                RunState.TIMED_OUT,
                "deadline",
                error=f"the run's deadline of {run.spec.deadline_s:g}s passed",
            )
        except asyncio.CancelledError:
            reason = run.cancel_reason or "cancelled"
            run.finish(RunState.CANCELLED, reason, error=f"run cancelled ({reason})")
            if run.cancel_reason is None:
                raise  # cancelled by something other than Run.request_cancel
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except PlannerError as exc:
            output = exc.output if isinstance(exc, PlannerOutputError) else None
            run.record("error", message=str(exc), output=_cut(output, 2000))
            run.finish(RunState.FAILED, "planner_error", error=f"planner: {exc}")
        except Exception as exc:
            log.exception("run failed with a bug run_id=%s", run.id)
            run.record("error", message=repr(exc))
            run.finish(RunState.FAILED, "internal_error", error=f"internal error: {exc!r}")

    async def _loop(self, run: Run, allowed: dict[str, ToolInfo]) -> None:
        spec = run.spec
        history: list[Turn] = []
        for index in range(spec.max_steps):
            state = PlanningState(
                run_id=run.id,
                task=spec.task,
                tools=list(allowed.values()),
                system_prompt=spec.system_prompt,
                history=tuple(history),
                time_left=run.deadline - time.monotonic(),
                max_tool_calls=spec.max_tool_calls_per_step,
            )
            started = time.perf_counter()
            try:
                step = await self.planner.plan(state)
            finally:
                self.metrics.planner_duration.labels(self.planner.name).observe(
                    time.perf_counter() - started
                )
            run.steps = index + 1
            if step.final is not None and not step.tool_calls:
                run.record("plan", step=index, answer=step.final, text=step.text)
                run.record("final", answer=step.final)
                run.finish(RunState.SUCCEEDED, "final_answer", answer=step.final)
                return
            if not step.tool_calls:
                raise PlannerOutputError(
                    "the planner proposed neither tool calls nor an answer", ""
                )
            run.record(
                "plan",
                step=index,
                text=step.text,
                tool_calls=[_describe_call(c) for c in step.tool_calls],
            )
            observations = await self._execute_step(run, step, allowed)
            history.append(Turn(step, tuple(observations)))
        message = f"no final answer after max_steps={spec.max_steps} steps"
        run.record("error", message=message)
        run.finish(RunState.FAILED, "max_steps", error=message)

    async def _execute_step(
        self, run: Run, step: Step, allowed: dict[str, ToolInfo]
    ) -> list[Observation]:
        limit = run.spec.max_tool_calls_per_step
        run.tool_calls += len(step.tool_calls)
        runnable = step.tool_calls[:limit]
        over = step.tool_calls[limit:]
        observations = list(
            await asyncio.gather(*(self._execute(run, call, allowed) for call in runnable))
        )
        for call in over:
            observations.append(
                self._local(
                    run,
                    call,
                    "refused",
                    f"not run: at most {limit} tool calls per step; call it in the next step",
                )
            )
        return observations

    async def _execute(
        self, run: Run, call: ToolCallRequest, allowed: dict[str, ToolInfo]
    ) -> Observation:
        """Run one proposed call through the sidecar; always returns its observation."""
        if call.arguments is None:
            return self._local(run, call, "malformed", call.error)
        tool = allowed.get(call.name)
        if tool is None:
            names = ", ".join(sorted(allowed)) or "none"
            return self._local(
                run, call, "refused", f"no tool named {call.name!r} here; available: {names}"
            )
        run.record("call", id=call.id, tool=call.name, arguments=call.arguments)
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            left = run.deadline - time.monotonic()
            timeout = max(0.001, min(left, tool.timeout_ms / 1000 if tool.timeout_ms else left))
            try:
                result = await self.client.call(
                    call.name,
                    call.arguments,
                    agent_id=run.id,
                    timeout=timeout,
                    metadata={"run_id": run.id, "tool_call_id": call.id},
                )
            except SidecarError as exc:
                return self._finish_call(
                    run, call, "unavailable", _error_json(str(exc)), None, started, attempts
                )
            wait = result.retry_after_ms / 1000
            if (
                result.status is Status.RATE_LIMITED
                and attempts <= self.options.max_rate_limit_retries
                and time.monotonic() + wait < run.deadline
            ):
                run.record("retry", id=call.id, status="rate_limited", wait_s=wait)
                await asyncio.sleep(wait)
                continue
            status = result.status.name.lower()
            content, value = self._content(result)
            return self._finish_call(run, call, status, content, value, started, attempts)

    def _content(self, r: ToolResult) -> tuple[str, Any]:
        """What the model is shown for a sidecar result, and the parsed value if OK."""
        if r.status is Status.OK:
            text = r.result_bytes.decode("utf-8", "replace")
            return _cut(text, self.options.max_observation_chars) or "null", r.json()
        body: dict[str, Any] = {"error": r.error or r.status.name.lower()}
        if r.status is Status.INVALID_ARGUMENTS:
            body["violations"] = [
                {"path": v.instance_path or "/", "message": v.message} for v in r.violations
            ]
        elif r.status is Status.UPSTREAM_ERROR:
            body["upstream_status"] = r.upstream_status
            if r.result_bytes:
                body["body"] = _cut(r.result_bytes.decode("utf-8", "replace"), 2000)
        elif r.retry_after_ms:
            body["retry_after_ms"] = r.retry_after_ms
        return _cut(orjson.dumps(body).decode(), self.options.max_observation_chars), None

    def _local(self, run: Run, call: ToolCallRequest, status: str, error: str) -> Observation:
        """An observation made without calling the sidecar."""
        run.record("call", id=call.id, tool=call.name, raw_arguments=_cut(call.raw_arguments, 500))
        return self._finish_call(
            run, call, status, _error_json(error), None, time.perf_counter(), 0
        )

    def _finish_call(
        self,
        run: Run,
        call: ToolCallRequest,
        status: str,
        content: str,
        value: Any,
        started: float,
        attempts: int,
    ) -> Observation:
        duration = time.perf_counter() - started
        self.metrics.tool_calls.labels(status).inc()
        run.record(
            "result",
            id=call.id,
            tool=call.name,
            status=status,
            duration_s=round(duration, 6),
            attempts=attempts,
            content=_cut(content, self.options.max_event_chars),
        )
        return Observation(call, status, content, value, duration, attempts)


def _describe_call(call: ToolCallRequest) -> dict[str, Any]:
    described: dict[str, Any] = {"id": call.id, "name": call.name}
    if call.arguments is not None:
        described["arguments"] = call.arguments
    else:
        described["raw_arguments"] = _cut(call.raw_arguments, 500)
        described["error"] = call.error
    return described


def _error_json(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


def _cut(text: str | None, limit: int) -> str:
    if text is None:
        return ""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def _loop_time(monotonic_deadline: float) -> float:
    """Convert a ``time.monotonic()`` deadline to the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
