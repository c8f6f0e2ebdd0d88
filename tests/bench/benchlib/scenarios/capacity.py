"""Scenario 1: capacity under an SLO.

Agents think for ``THINK_MS`` (the LLM's share of a step), then make one ``search`` call
(the ~100 KB document, validated), and repeat. For each dispatcher the number of agents
doubles from ``START_AGENTS`` until tool-call p99 exceeds the SLO (or a call fails), then
bisects between the last pass and the first failure. The three searches are interleaved
(one step of each per round), so the load of a shared machine falls on all alike. The
capacity is the busiest step that held the SLO: its agents and calls/s.
"""

from __future__ import annotations

import math
from typing import Any

from ..dispatchers import DISPATCHERS
from ..runner import Measurement
from .base import Context, ScenarioResult, Target, mib

THINK_MS = 800
SLO_P99_MS = 45.0
START_AGENTS = 8
MAX_AGENTS = 12_800
TARGET_VS_NAIVE = 14.5
TARGET_VS_TUNED = 3.0
#: A step that misses the SLO while processes outside the benchmark used more than this
#: many cores on average is measured once more (the machine is shared).
NOISY_CORES = 0.25


COLUMNS = [
    "dispatcher",
    "max_agents",
    "calls_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "brain_cpu_s_per_1k",
    "sidecar_cpu_s_per_1k",
    "upstream_cpu_s_per_1k",
    "brain_peak_rss_mib",
    "sidecar_peak_rss_mib",
    "other_cores",
    "tandem_ratio",
]


def _holds(m: Measurement) -> bool:
    return m.calls > 0 and m.errors == 0 and m.latency["p99_ms"] <= SLO_P99_MS


def _step_row(agents: int, m: Measurement) -> dict[str, Any]:
    cpu = m.cpu_per_1k()
    return {
        "agents": agents,
        "calls_per_s": m.calls_per_s,
        "calls": m.calls,
        "errors": m.errors,
        **m.latency,
        "holds_slo": _holds(m),
        "other_cores": m.other_cores,
        "cpu_s_per_1k": cpu,
        "peak_rss_mib": {role: mib(v) for role, v in m.peak_rss.items()},
    }


class Ramp:
    """One dispatcher's search for its capacity: double the agents while the SLO holds;
    when even the first step misses, halve them; then bisect between the last pass and
    the first failure."""

    def __init__(self, *, max_steps: int, bisections: int) -> None:
        self.steps: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.failed: int | None = None
        self._next: int | None = START_AGENTS
        self._max_steps = max_steps
        self._bisections = bisections

    def next_agents(self) -> int | None:
        """The agents of the next step, or None when the search is over."""
        if len(self.steps) >= self._max_steps:
            return None
        if self._next is not None and self._next <= MAX_AGENTS:
            return self._next
        if self._bisections <= 0 or self.best is None or self.failed is None:
            return None
        mid = round(math.sqrt(self.best["agents"] * self.failed))
        return None if mid in (self.best["agents"], self.failed) else mid

    def record(self, row: dict[str, Any]) -> None:
        agents = row["agents"]
        bisecting = self._next is None
        self.steps.append(row)
        if bisecting:
            self._bisections -= 1
        if row["holds_slo"]:
            if self.best is None or agents > self.best["agents"]:
                self.best = row
            if not bisecting:
                self._next = agents * 2
        else:
            self.failed = agents if self.failed is None else min(self.failed, agents)
            if not bisecting:
                # Going up: a failure ends the doubling. Not one pass yet: look lower.
                self._next = agents // 2 if self.best is None and agents > 1 else None


def _step(ctx: Context, dispatcher: str, agents: int) -> dict[str, Any]:
    warmup, window = (1.0, 2.0) if ctx.quick else (2.0, 6.0)
    config = {
        "dispatcher": dispatcher,
        "mode": "think",
        "tool": "search",
        "agents": agents,
        "think_ms": THINK_MS,
        "warmup_s": warmup,
        "measure_s": window,
    }
    m = ctx.run(config, timeout=warmup + window + 60)
    if not _holds(m) and m.other_cores > NOISY_CORES:
        # Another job shared the machine during this window: measure once more.
        ctx.log(
            f"    {dispatcher:<13} {agents:>6} agents  re-measured: {m.other_cores:.2f} "
            "cores went to other processes"
        )
        m = ctx.run(config, timeout=warmup + window + 60)
    row = _step_row(agents, m)
    ctx.log(
        f"    {dispatcher:<13} {agents:>6} agents  {m.calls_per_s:8.1f} calls/s  "
        f"p99 {m.latency['p99_ms']:8.1f} ms  errors {m.errors}  "
        f"others {m.other_cores:4.2f} cores  "
        f"{'ok' if row['holds_slo'] else 'over SLO'}"
    )
    return row


def _ramps(ctx: Context) -> dict[str, Ramp]:
    """Every dispatcher's ramp, interleaved: each round measures each dispatcher once, so
    whatever else the shared machine is doing falls on all of them alike."""
    ramps = {
        d: Ramp(max_steps=2 if ctx.quick else 16, bisections=0 if ctx.quick else 2)
        for d in DISPATCHERS
    }
    while True:
        todo = [(d, n) for d, r in ramps.items() if (n := r.next_agents()) is not None]
        if not todo:
            return ramps
        for dispatcher, agents in todo:
            ramps[dispatcher].record(_step(ctx, dispatcher, agents))


def run(ctx: Context) -> ScenarioResult:
    searches = _ramps(ctx)
    ramps = {d: r.steps for d, r in searches.items()}
    rows: list[dict[str, Any]] = []
    best_rate: dict[str, float] = {}
    for dispatcher in DISPATCHERS:
        best = searches[dispatcher].best
        best_rate[dispatcher] = best["calls_per_s"] if best else 0.0
        row: dict[str, Any] = {"dispatcher": dispatcher}
        if best is None:
            # Not even one agent held the SLO: no step to report numbers from.
            row.update({column: None for column in COLUMNS[1:]})
            row.update({"max_agents": 0, "calls_per_s": 0.0})
        else:
            cpu = best["cpu_s_per_1k"]
            rss = best["peak_rss_mib"]
            row.update(
                {
                    "max_agents": best["agents"],
                    "calls_per_s": best["calls_per_s"],
                    "p50_ms": best["p50_ms"],
                    "p95_ms": best["p95_ms"],
                    "p99_ms": best["p99_ms"],
                    "brain_cpu_s_per_1k": cpu.get("brain"),
                    "sidecar_cpu_s_per_1k": cpu.get("sidecar"),
                    "upstream_cpu_s_per_1k": cpu.get("upstream"),
                    "brain_peak_rss_mib": rss.get("brain"),
                    "sidecar_peak_rss_mib": rss.get("sidecar"),
                    "other_cores": best["other_cores"],
                }
            )
        rows.append(row)
    tandem = best_rate["tandem"]
    for row in rows:
        other = best_rate[row["dispatcher"]]
        row["tandem_ratio"] = (tandem / other) if other else math.inf

    targets = []
    for baseline, goal in (("python-naive", TARGET_VS_NAIVE), ("python-tuned", TARGET_VS_TUNED)):
        ratio = tandem / best_rate[baseline] if best_rate[baseline] else math.inf
        targets.append(
            Target(
                name=f"capacity vs {baseline}",
                goal=f">= {goal}x calls/s under p99 <= {SLO_P99_MS:g} ms",
                measured=f"{ratio:.1f}x ({tandem:.0f} vs {best_rate[baseline]:.0f} calls/s)",
                met=None if ctx.quick else (ratio >= goal if tandem else False),
                why="QUICK run: the ramp stops after two steps" if ctx.quick else "",
            )
        )
    notes = [
        f"think time {THINK_MS} ms per step, one `search` call (~100 KB JSON, output schema "
        f"validated) per step; SLO: tool-call p99 <= {SLO_P99_MS:g} ms with no failed call",
        "CPU is per 1,000 calls at the busiest step that held the SLO, by process: brain "
        "(agents + dispatcher), sidecar, upstream (nginx); the brain's share includes the "
        "agents' own loop, the same for every dispatcher",
        "other_cores: cores used on average by processes outside the benchmark during the "
        "window (the machine is shared); a step that missed the SLO with more than "
        f"{NOISY_CORES} is measured once more",
        "tandem hands the agent the validated bytes; the Python dispatchers hand it the "
        "parsed document, which they need for validation anyway",
    ]
    return ScenarioResult(
        key="1_capacity",
        title="Scenario 1: capacity under a p99 SLO (100 KB documents)",
        columns=COLUMNS,
        rows=rows,
        targets=targets,
        notes=notes,
        detail={
            "ramps": ramps,
            "think_ms": THINK_MS,
            "slo_p99_ms": SLO_P99_MS,
        },
    )
