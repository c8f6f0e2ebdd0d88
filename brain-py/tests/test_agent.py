"""The agent loop and the run manager, with a scripted planner and a fake sidecar client.

(The same paths against the real sidecar are in ``tests/test_brain_*.py``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest

from brain import Status, ToolInfo, ToolResult
from brain._agent import Agent
from brain._catalog import ToolCatalog
from brain._exceptions import AdmissionRefused, PlannerOutputError, RunNotFound
from brain._metrics import BrainMetrics
from brain._planners.base import PlanningState, Step, ToolCallRequest, parse_arguments
from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._runs.manager import RunManager, RunManagerOptions
from brain._runs.record import Run, RunSpec, RunState

TOOLS = [
    ToolInfo("echo", "Echo the arguments.", {"type": "object"}, None, 5000, ()),
    ToolInfo("slow", "Never answers.", {"type": "object"}, None, 5000, ()),
]


class FakeClient:
    """Answers ``echo`` with its arguments; ``slow`` blocks until cancelled."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.cancelled = 0
        self.started = asyncio.Event()
        self.script: dict[str, list[ToolResult]] = {}

    async def call(
        self,
        tool: str,
        arguments: Mapping[str, Any] | bytes | None = None,
        *,
        agent_id: str = "",
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ToolResult:
        self.calls.append((tool, arguments))
        if self.script.get(tool):
            return self.script[tool].pop(0)
        if tool == "slow":
            self.started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return ok(arguments)


def ok(value: Any) -> ToolResult:
    return ToolResult(pb.ToolResult(status=pb.STATUS_OK, result=orjson.dumps(value)))


class ScriptedPlanner:
    """Plans with a function of the state; records what it saw."""

    name = "scripted"
    ready = True
    reserved_tools: frozenset[str] = frozenset()

    def __init__(self, fn: Callable[[PlanningState], Step], latency: float = 0.0) -> None:
        self.fn = fn
        self.latency = latency
        self.states: list[PlanningState] = []

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def plan(self, state: PlanningState) -> Step:
        self.states.append(state)
        if self.latency:
            await asyncio.sleep(self.latency)
        return self.fn(state)


def call(name: str, args: dict[str, Any] | None = None, call_id: str = "c1") -> ToolCallRequest:
    return ToolCallRequest(call_id, name, args or {}, orjson.dumps(args or {}).decode())


def manager(
    planner: ScriptedPlanner, client: FakeClient | None = None, **options: int
) -> RunManager:
    metrics = BrainMetrics()
    agent = Agent(client or FakeClient(), planner, metrics)

    async def fetch() -> list[ToolInfo]:
        return TOOLS

    catalog = ToolCatalog(fetch)
    catalog._tools = {t.name: t for t in TOOLS}
    catalog.loaded = True
    return RunManager(agent, catalog, metrics, options=RunManagerOptions(**options))


async def test_two_steps_then_an_answer_with_one_observation_per_call() -> None:
    def plan(state: PlanningState) -> Step:
        if state.step_index == 0:
            return Step.calls(call("echo", {"a": 1}, "x"), call("echo", {"b": 2}, "y"))
        return Step.answer(f"saw {[o.content for o in state.history[0].observations]}")

    runs = manager(ScriptedPlanner(plan))
    run = runs.submit(RunSpec(task="t"))
    assert await run.wait(5)
    assert run.state is RunState.SUCCEEDED
    assert run.answer == """saw ['{"a":1}', '{"b":2}']"""
    types = [e.type for e in run.events]
    assert types[:2] == ["state", "plan"]
    assert types[-3:] == ["plan", "final", "state"]
    assert sorted(types[2:-3]) == ["call", "call", "result", "result"]
    for call_id in ("x", "y"):
        order = [e.type for e in run.events if e.data.get("id") == call_id]
        assert order == ["call", "result"]
    assert [e.seq for e in run.events] == list(range(len(run.events)))


async def test_malformed_and_unknown_and_excess_calls_get_observations_not_sent() -> None:
    client = FakeClient()

    def plan(state: PlanningState) -> Step:
        if state.step_index == 0:
            return Step.calls(
                parse_arguments("m", "echo", '{"city": "Oslo"'),
                parse_arguments("n", "echo", "[1, 2]"),
                call("nope", {}, "u"),
                call("echo", {"i": 1}, "e1"),
                call("echo", {"i": 2}, "e2"),
            )
        return Step.answer("done")

    planner = ScriptedPlanner(plan)
    runs = manager(planner, client)
    run = runs.submit(RunSpec(task="t", max_tool_calls_per_step=4))
    assert await run.wait(5)
    observations = planner.states[1].history[0].observations
    assert [(o.call.id, o.status) for o in observations] == [
        ("m", "malformed"),
        ("n", "malformed"),
        ("u", "refused"),
        ("e1", "ok"),
        ("e2", "refused"),
    ]
    assert "not valid JSON" in observations[0].content
    assert "must be a JSON object" in observations[1].content
    assert "no tool named 'nope'" in observations[2].content
    assert "at most 4 tool calls per step" in observations[4].content
    assert client.calls == [("echo", {"i": 1})]


async def test_max_steps_ends_the_run_failed() -> None:
    runs = manager(ScriptedPlanner(lambda s: Step.calls(call("echo", {}, f"c{s.step_index}"))))
    run = runs.submit(RunSpec(task="t", max_steps=3))
    assert await run.wait(5)
    assert (run.state, run.stop_reason, run.steps) == (RunState.FAILED, "max_steps", 3)
    assert "max_steps=3" in (run.error or "")


async def test_deadline_ends_the_run_timed_out() -> None:
    client = FakeClient()
    runs = manager(ScriptedPlanner(lambda s: Step.calls(call("slow"))), client)
    run = runs.submit(RunSpec(task="t", deadline_s=0.3))
    assert await run.wait(5)
    assert (run.state, run.stop_reason) == (RunState.TIMED_OUT, "deadline")
    assert client.cancelled == 1  # the tool call in flight was cancelled


async def test_cancel_mid_run_cancels_the_tool_call_in_flight() -> None:
    client = FakeClient()
    runs = manager(ScriptedPlanner(lambda s: Step.calls(call("slow"))), client)
    run = runs.submit(RunSpec(task="t"))
    await asyncio.wait_for(client.started.wait(), 5)
    runs.cancel(run.id)
    assert await run.wait(5)
    assert (run.state, run.stop_reason) == (RunState.CANCELLED, "cancelled")
    assert client.cancelled == 1
    assert runs.in_flight == 0


async def test_rate_limited_calls_are_retried_after_retry_after_ms() -> None:
    client = FakeClient()
    limited = ToolResult(pb.ToolResult(status=pb.STATUS_RATE_LIMITED, retry_after_ms=20))
    client.script["echo"] = [limited, limited]

    def plan(state: PlanningState) -> Step:
        if state.step_index == 0:
            return Step.calls(call("echo", {"q": 1}))
        return Step.answer(state.history[0].observations[0].status)

    run = manager(ScriptedPlanner(plan), client).submit(RunSpec(task="t"))
    assert await run.wait(5)
    assert run.answer == "ok"
    assert len(client.calls) == 3
    assert [e.type for e in run.events].count("retry") == 2


async def test_invalid_arguments_become_an_observation_with_the_violations() -> None:
    client = FakeClient()
    bad = pb.ToolResult(status=pb.STATUS_INVALID_ARGUMENTS, error="1 violation")
    bad.violations.add(instance_path="/units", schema_path="/enum", message='"k" is not one of')
    client.script["echo"] = [ToolResult(bad)]

    def plan(state: PlanningState) -> Step:
        if state.step_index == 0:
            return Step.calls(call("echo", {"units": "k"}))
        return Step.answer(state.history[0].observations[0].content)

    run = manager(ScriptedPlanner(plan), client).submit(RunSpec(task="t"))
    assert await run.wait(5)
    body = orjson.loads(run.answer or "")
    assert body["violations"] == [{"path": "/units", "message": '"k" is not one of'}]


async def test_a_planner_error_fails_the_run_with_a_clear_message() -> None:
    def plan(state: PlanningState) -> Step:
        raise PlannerOutputError("neither a tool call nor an answer", "gibberish")

    run = manager(ScriptedPlanner(plan)).submit(RunSpec(task="t"))
    assert await run.wait(5)
    assert (run.state, run.stop_reason) == (RunState.FAILED, "planner_error")
    assert run.error == "planner: neither a tool call nor an answer"
    assert run.events[-2].type == "error"
    assert run.events[-2].data["output"] == "gibberish"


async def test_admission_is_bounded_and_draining_refuses() -> None:
    runs = manager(ScriptedPlanner(lambda s: Step.calls(call("slow"))), max_in_flight=2)
    a = runs.submit(RunSpec(task="a"))
    runs.submit(RunSpec(task="b"))
    with pytest.raises(AdmissionRefused) as refused:
        runs.submit(RunSpec(task="c"))
    assert not refused.value.draining
    assert refused.value.retry_after_s >= 1
    assert runs.get(a.id) is a
    with pytest.raises(RunNotFound):
        runs.get("nope")
    report = await runs.drain(0.1)
    assert (report.finished, report.cancelled) == (0, 2)
    assert a.state is RunState.CANCELLED
    assert a.stop_reason == "shutdown"
    with pytest.raises(AdmissionRefused) as refused:
        runs.submit(RunSpec(task="d"))
    assert refused.value.draining


async def test_drain_lets_runs_in_flight_finish() -> None:
    runs = manager(ScriptedPlanner(lambda s: Step.answer("ok"), latency=0.2))
    run = runs.submit(RunSpec(task="t"))
    report = await runs.drain(10)
    assert (report.finished, report.cancelled) == (1, 0)
    assert run.state is RunState.SUCCEEDED


async def test_finished_runs_are_retained_up_to_the_bound() -> None:
    runs = manager(ScriptedPlanner(lambda s: Step.answer("ok")), max_retained=3)
    ids = []
    for i in range(5):
        run = runs.submit(RunSpec(task=str(i)))
        await run.wait(5)
        ids.append(run.id)
    with pytest.raises(RunNotFound):
        runs.get(ids[0])
    assert runs.get(ids[-1]).answer == "ok"


async def test_follow_yields_every_event_once_in_order() -> None:
    gate = asyncio.Event()

    class Gated(ScriptedPlanner):
        async def plan(self, state: PlanningState) -> Step:
            await gate.wait()
            return await super().plan(state)

    def plan(state: PlanningState) -> Step:
        if state.step_index == 0:
            return Step.calls(call("echo"))
        return Step.answer("fin")

    run = manager(Gated(plan)).submit(RunSpec(task="t"))
    seen: list[int] = []

    async def follow() -> None:
        seen.extend([e.seq async for e in run.follow()])

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.wait_for(follower, 5)
    assert seen == list(range(len(run.events)))
    assert run.events[-1].data["state"] == "succeeded"


def test_status_names_are_the_observation_statuses() -> None:
    # Observations and brain_tool_calls_total use the lower-case sidecar status names.
    assert {s.name.lower() for s in Status} >= {"ok", "invalid_arguments", "rate_limited"}


async def test_an_unsubmitted_run_can_be_cancelled() -> None:
    run = Run(RunSpec(task="t"))
    assert run.request_cancel()
    assert run.state is RunState.CANCELLED
    assert not run.request_cancel()


async def test_a_run_cancelled_before_it_starts_is_accounted_for() -> None:
    runs = manager(ScriptedPlanner(lambda s: Step.answer("never")))
    run = runs.submit(RunSpec(task="t"))
    runs.cancel(run.id)  # before its task ran a single step
    assert await run.wait(5)
    assert (run.state, run.stop_reason) == (RunState.CANCELLED, "cancelled")
    assert runs.in_flight == 0
    assert runs.metrics.runs_in_flight._value.get() == 0
    assert runs.get(run.id) is run
