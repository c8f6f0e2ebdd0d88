"""The demo workload: many concurrent agents running scripted multi-step tasks.

Each agent follows a small plan (steps of one or more tool calls, run concurrently) and
reacts to what it observes the way an agent loop must: it waits out RATE_LIMITED
(``retry_after_ms``), corrects INVALID_ARGUMENTS using the reported violations, and
records every other outcome. The scripted :class:`Plan` stands where an LLM planner will
(the ``brain`` agent runtime); the calls, the sidecar and the upstream are all real.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._client import SidecarClient
from ._types import Status, ToolResult

__all__ = ["DemoReport", "Plan", "run_demo"]

CITIES = ["Reykjavík", "Tokyo", "São Paulo", "New York", "Cairo", "Sydney", "Berlin", "Mumbai"]
TOPICS = ["circuit breaker", "rate limiting", "kubernetes pods", "rust async", "grpc streaming"]

#: How often an agent retries a call the sidecar rate-limited or it corrected.
MAX_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Request:
    """One tool call an agent wants to make, and how to fix its arguments if refused."""

    tool: str
    arguments: dict[str, Any]
    fix: Callable[[dict[str, Any]], dict[str, Any]] | None = None


#: A step: calls to run concurrently, or a function of the previous step's results that
#: returns them (how an agent uses what it observed).
Step = Sequence[Request] | Callable[[list[ToolResult]], Sequence[Request]]


@dataclass(frozen=True, slots=True)
class Plan:
    """A task as the agent would plan it: steps of calls that run concurrently."""

    task: str
    steps: Sequence[Step]


def _temperature_difference(results: list[ToolResult]) -> Sequence[Request]:
    if not all(r.ok for r in results):
        return []
    a, b = (r.json()["current"]["temperature"] for r in results)
    return [Request("calculator", {"expression": f"abs({a} - {b})"})]


def make_plan(rng: random.Random) -> Plan:
    """A random task from the demo catalogue."""
    city, other = rng.sample(CITIES, 2)
    kind = rng.randrange(5)
    if kind == 0:
        return Plan(
            f"What is the weather in {city}, in Fahrenheit?",
            [[Request("weather", {"city": city, "units": "f"})]],
        )
    if kind == 1:
        return Plan(
            f"Is it warmer in {city} or {other}, and by how much?",
            [
                [Request("weather", {"city": city}), Request("weather", {"city": other})],
                _temperature_difference,
            ],
        )
    if kind == 2:
        topic = rng.choice(TOPICS)
        # Eight searches at once: more than the per-agent limit of 5/s allows, so some
        # come back RATE_LIMITED and are retried after retry_after_ms.
        return Plan(
            f"Research {topic} from several angles.",
            [[Request("search", {"query": f"{topic} {angle}", "limit": 3}) for angle in range(8)]],
        )
    if kind == 3:
        # The planner first asks for a unit the tool does not know; the violation names
        # the field, and the agent corrects it.
        return Plan(
            "How many miles is a 42.195 km marathon?",
            [
                [
                    Request(
                        "convert_units",
                        {"value": 42.195, "from": "kilometres", "to": "mi"},
                        fix=lambda args: {**args, "from": "km"},
                    )
                ]
            ],
        )
    return Plan(
        "Compute a few things at once.",
        [
            [
                Request("calculator", {"expression": "2 ** 10 + sqrt(144)"}),
                Request("calculator", {"expression": "(1 + 2) * pi"}),
                Request("convert_units", {"value": 100, "from": "c", "to": "f"}),
            ]
        ],
    )


@dataclass(slots=True)
class DemoReport:
    """What happened, as seen by the agents."""

    agents: int = 0
    agents_done: int = 0
    wall_s: float = 0.0
    attempts: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    upstream_ms: list[float] = field(default_factory=list)
    retries_rate_limited: int = 0
    corrections: int = 0
    frames_sent: int = 0
    errors: list[str] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(self.attempts.values())

    def render(self) -> str:
        lines = [
            f"agents: {self.agents_done}/{self.agents} finished in {self.wall_s:.2f}s",
            f"tool calls: {self.calls} ({self.calls / max(self.wall_s, 1e-9):.0f}/s) "
            f"in {self.frames_sent} frames "
            f"({self.calls / max(self.frames_sent, 1):.1f} calls/frame)",
            "calls by status (every attempt):",
        ]
        lines += [f"  {status:<18} {n:>6}" for status, n in self.attempts.most_common()]
        lines.append("final outcome of each requested call:")
        lines += [f"  {status:<18} {n:>6}" for status, n in self.outcomes.most_common()]
        lines.append(
            f"rate-limited and retried after retry_after_ms: {self.retries_rate_limited}; "
            f"arguments corrected after INVALID_ARGUMENTS: {self.corrections}"
        )
        if self.latencies_ms:
            lines.append(
                "call latency (agent view): "
                f"p50 {_pct(self.latencies_ms, 50):.1f} ms, "
                f"p99 {_pct(self.latencies_ms, 99):.1f} ms; "
                f"upstream p50 {_pct(self.upstream_ms, 50):.1f} ms"
            )
        if self.samples:
            lines.append("a few answers:")
            lines += [f"  {task}\n    -> {answer}" for task, answer in self.samples]
        if self.errors:
            lines.append(f"errors ({len(self.errors)}): {self.errors[:3]}")
        return "\n".join(lines)


def _pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


async def _call(
    client: SidecarClient, agent_id: str, request: Request, report: DemoReport
) -> ToolResult:
    """Make one requested call, reacting to RATE_LIMITED and INVALID_ARGUMENTS."""
    arguments = request.arguments
    for attempt in range(MAX_RETRIES + 1):
        started = time.perf_counter()
        result = await client.call(request.tool, arguments, agent_id=agent_id, timeout=10)
        report.latencies_ms.append((time.perf_counter() - started) * 1000)
        report.upstream_ms.append(result.timing.upstream_us / 1000)
        report.attempts[result.status.name] += 1
        if attempt == MAX_RETRIES:
            break
        if result.status is Status.RATE_LIMITED:
            report.retries_rate_limited += 1
            await asyncio.sleep(result.retry_after_ms / 1000)
        elif result.status is Status.INVALID_ARGUMENTS and request.fix is not None:
            report.corrections += 1
            arguments = request.fix(arguments)
        else:
            break
    report.outcomes[result.status.name] += 1
    return result


async def _agent(client: SidecarClient, agent_id: str, plan: Plan, report: DemoReport) -> None:
    last: list[ToolResult] = []
    for step in plan.steps:
        requests = step(last) if callable(step) else step
        last = await asyncio.gather(*(_call(client, agent_id, r, report) for r in requests))
    report.agents_done += 1
    seen = {task.split()[0] for task, _ in report.samples}
    if len(report.samples) < 5 and last and last[0].ok and plan.task.split()[0] not in seen:
        answer = last[0].json()
        summary = {k: answer[k] for k in list(answer)[:3]} if isinstance(answer, dict) else answer
        report.samples.append((plan.task, str(summary)[:160]))


async def run_demo(client: SidecarClient, *, agents: int, seed: int = 7) -> DemoReport:
    """Run ``agents`` concurrent agents to completion and report what they saw."""
    rng = random.Random(seed)
    report = DemoReport(agents=agents)
    await client.wait_connected(timeout=15)
    frames_before = client.frames_sent
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(_agent(client, f"agent-{i:04d}", make_plan(rng), report) for i in range(agents)),
        return_exceptions=True,
    )
    report.wall_s = time.perf_counter() - started
    report.frames_sent = client.frames_sent - frames_before
    report.errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    return report
