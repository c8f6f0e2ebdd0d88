"""Scenario 1: capacity under an SLO, found to within ±5%, with error bars.

Agents think for ``THINK_MS`` ± ``THINK_JITTER`` (the LLM's share of a step, which varies
from step to step), then make one ``search`` call
(the ~100 KB document, validated), and repeat. A step runs a number of agents for a
window and *holds* when tool-call p99 is within the SLO and no call failed.

Each stack's capacity is searched ``REPEATS`` times (:class:`Search`):

1. bracket: from a start, multiply the agents by a factor while steps hold (divide while
   they do not) until one step holds and a neighbour does not: ``lo`` holds, ``hi`` not;
2. bisect (geometric midpoint) until ``sqrt(hi / lo) - 1 <= TOLERANCE`` (5%): the
   capacity then lies between ``lo`` and ``hi``, within ±5% of their geometric mean.

The first search brackets from ``START_AGENTS`` by doubling; each later one starts just
under the previous estimate with a factor of ``REPEAT_FACTOR``, which takes a few steps. A
search's capacity in calls/s is the rate measured at ``lo``, scaled by ``sqrt(hi / lo)``
(the offered rate is proportional to the agents: think time is 800 ms, the SLO 45 ms);
its bounds are the rate at ``lo`` and that rate times ``hi / lo``. The reported capacity
is the median of the searches; the error bar spans the lowest ``lo`` to the highest ``hi``
of all of them, so it holds both the resolution and the run-to-run spread.

The searches of all stacks are interleaved (one step of each per round), so the load of a
shared machine falls on all alike. ``python-tuned xN`` is python-tuned as N processes, one
per core, each pinned with ``taskset -c`` and given 1/N of the agents.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from ..dispatchers import multi_label, stacks
from ..runner import Measurement, cores
from . import paired
from .base import Context, ScenarioResult, Target, mib

THINK_MS = 800
#: Each think is THINK_MS x (1 ± this), uniform: a fixed think time kept agents that one
#: slow moment delayed in step, and their bursts (not the load) set p99 (docs/performance.md).
THINK_JITTER = 0.25
SLO_P99_MS = 45.0
START_AGENTS = 8
MAX_AGENTS = 25_600
TARGET_VS_NAIVE = 14.5
TARGET_VS_TUNED = 3.0
#: Issue 12: capacity >= 2x python-tuned run as one process per core, on the same cores.
TARGET_VS_TUNED_N = 2.0
#: Half-width of the bracket, relative, at which a search stops (±5%).
TOLERANCE = 0.05
REPEATS = 3
#: Later searches bracket the previous estimate with steps of this factor.
REPEAT_FACTOR = 1.3
MAX_STEPS = 24
#: A step that misses the SLO while processes outside the benchmark used more than this
#: many cores on average is measured once more (the machine is shared).
NOISY_CORES = 0.25


COLUMNS = [
    "dispatcher",
    "processes",
    "calls_per_s",
    "calls_per_s_low",
    "calls_per_s_high",
    "searches",
    "resolution_pct",
    "max_agents",
    "p99_ms",
    "brain_cpu_s_per_1k",
    "sidecar_cpu_s_per_1k",
    "upstream_cpu_s_per_1k",
    "brain_peak_rss_mib",
    "sidecar_peak_rss_mib",
    "other_cores",
    "tandem_ratio",
]


#: ``tandem xB`` runs a brain process per this many cores, all on one sidecar: the brain is
#: about a quarter of tandem's CPU per call (scenario 1), so the sidecar stays the limit.
CORES_PER_BRAIN = 4


def brains_label(brains: int) -> str:
    """The label of tandem with ``brains`` agent processes sharing one sidecar."""
    return f"tandem x{brains} brains"


def brains(cores: int) -> int:
    """Brain processes of ``tandem xB`` on ``cores`` (at least one)."""
    return max(1, cores // CORES_PER_BRAIN)


def resolve(name: str, cores: int) -> str | None:
    """A stack's label on ``cores`` from its name in a :class:`Plan`: ``python-tuned xN``
    is python-tuned with a process per core, ``tandem xB`` tandem with a brain per
    :data:`CORES_PER_BRAIN` cores (None where that is one brain: plain ``tandem``)."""
    if name == "python-tuned xN":
        return multi_label(cores)
    if name == "tandem xB":
        return brains_label(brains(cores)) if brains(cores) > 1 else None
    return name


@dataclass
class Plan:
    """What to search, when not everything (``scale_out.py`` on a larger machine, whose
    device time is short): the stacks (names as :func:`resolve` takes them), the searches
    per stack, and a first estimate of each stack's capacity in agents, so that the first
    search brackets it with steps of :data:`REPEAT_FACTOR` rather than doubling up from
    :data:`START_AGENTS`."""

    stacks: list[str] | None = None
    repeats: int = REPEATS
    estimates: dict[str, int] = field(default_factory=dict)
    #: Seconds of each step's warm-up and measured window (QUICK: 0.5 and 1.5).
    warmup_s: float = 2.0
    measure_s: float = 6.0

    def chosen(self, labels: dict[str, dict[str, Any]], n: int) -> dict[str, dict[str, Any]]:
        if self.stacks is None:
            return labels
        if "tandem" not in self.stacks:
            raise ValueError("the capacity scenario compares tandem with the others: name it")
        out: dict[str, dict[str, Any]] = {}
        for name in self.stacks:
            label = resolve(name, n)
            if label is None:
                continue
            if name == "tandem xB":
                out[label] = {"dispatcher": "tandem", "processes": brains(n)}
            elif label in labels:
                out[label] = labels[label]
            else:
                raise ValueError(f"no stack {name!r} on {n} cores; there are {list(labels)}")
        return out

    def first_estimates(self, n: int) -> dict[str, int]:
        """:attr:`estimates` by label on ``n`` cores."""
        out = {}
        for name, agents in self.estimates.items():
            label = resolve(name, n)
            if label is not None:
                out[label] = agents
        return out


def _holds(m: Measurement) -> bool:
    return m.calls > 0 and m.errors == 0 and m.latency["p99_ms"] <= SLO_P99_MS


def _step_row(agents: int, m: Measurement) -> dict[str, Any]:
    cpu = m.cpu_per_1k()
    return {
        "agents": agents,
        "calls_per_s": m.calls_per_s,
        "calls": m.calls,
        "errors": m.errors,
        "statuses": dict(m.statuses),
        **m.latency,
        "holds_slo": _holds(m),
        "other_cores": m.other_cores,
        "cpu_s_per_1k": cpu,
        "peak_rss_mib": {role: mib(v) for role, v in m.peak_rss.items()},
    }


class Search:
    """One search for a stack's capacity: bracket by a factor, then bisect to
    :data:`TOLERANCE` (see the module's docstring)."""

    def __init__(self, *, start: int, factor: float, max_steps: int, bisect: bool) -> None:
        self.steps: list[dict[str, Any]] = []
        self.lo: dict[str, Any] | None = None  # the most agents that held
        self.hi: int | None = None  # the fewest agents above ``lo`` that did not
        self._next: int | None = max(1, start)
        self._factor = factor
        self._max_steps = max_steps
        self._bisect = bisect

    @property
    def resolution(self) -> float:
        """Half-width of the bracket, relative (``inf`` until there is one)."""
        if self.lo is None or self.hi is None:
            return math.inf
        return math.sqrt(self.hi / self.lo["agents"]) - 1

    def next_agents(self) -> int | None:
        """The agents of the next step, or None when the search is over."""
        if len(self.steps) >= self._max_steps:
            return None
        if self._next is not None:
            return self._next if 1 <= self._next <= MAX_AGENTS else None
        if not self._bisect or self.lo is None or self.hi is None:
            return None
        if self.resolution <= TOLERANCE:
            return None
        mid = round(math.sqrt(self.lo["agents"] * self.hi))
        return None if mid in (self.lo["agents"], self.hi) else mid

    def record(self, row: dict[str, Any]) -> None:
        agents = row["agents"]
        bracketing = self._next is not None
        self.steps.append(row)
        below_hi = self.hi is None or agents < self.hi
        if row["holds_slo"]:
            if below_hi and (self.lo is None or agents > self.lo["agents"]):
                self.lo = row
        elif below_hi:
            self.hi = agents
            if self.lo is not None and self.lo["agents"] >= agents:
                # A pass above a failure (noise): only passes below the failure count.
                below = [s for s in self.steps if s["holds_slo"] and s["agents"] < agents]
                self.lo = max(below, key=lambda s: s["agents"]) if below else None
        if not bracketing:
            return
        if row["holds_slo"]:
            up = max(agents + 1, round(agents * self._factor))
            self._next = None if self.hi is not None else up
        else:
            down = min(agents - 1, round(agents / self._factor))
            self._next = None if self.lo is not None else (down if down >= 1 else None)

    def estimate(self) -> dict[str, Any] | None:
        """Capacity in calls/s with its bounds, or None when nothing held."""
        if self.lo is None:
            return None
        rate = self.lo["calls_per_s"]
        hi_agents = self.hi if self.hi is not None else self.lo["agents"]
        ratio = hi_agents / self.lo["agents"]
        return {
            "lo_agents": self.lo["agents"],
            "hi_agents": self.hi,
            "calls_per_s": rate * math.sqrt(ratio),
            "low": rate,
            # No failure seen (MAX_AGENTS held): no upper bound.
            "high": rate * ratio if self.hi is not None else math.inf,
            "resolution": self.resolution,
            "step": self.lo,
        }


def _step(
    ctx: Context, plan: Plan, label: str, stack: dict[str, Any], agents: int
) -> dict[str, Any]:
    warmup, window = (0.5, 1.5) if ctx.quick else (plan.warmup_s, plan.measure_s)
    config = {
        **stack,
        "mode": "think",
        "tool": "search",
        "agents": agents,
        "think_ms": THINK_MS,
        "think_jitter": THINK_JITTER,
        "warmup_s": warmup,
        "measure_s": window,
    }
    m = ctx.run(config, timeout=warmup + window + 60)
    if not _holds(m) and m.other_cores > NOISY_CORES:
        # Another job shared the machine during this window: measure once more.
        ctx.log(
            f"    {label:<17} {agents:>6} agents  re-measured: {m.other_cores:.2f} "
            "cores went to other processes"
        )
        m = ctx.run(config, timeout=warmup + window + 60)
    row = _step_row(agents, m)
    ctx.log(
        f"    {label:<17} {agents:>6} agents  {m.calls_per_s:8.1f} calls/s  "
        f"p99 {m.latency['p99_ms']:8.1f} ms  errors {m.errors}  "
        f"others {m.other_cores:4.2f} cores  "
        f"{'ok' if row['holds_slo'] else 'over SLO'}"
    )
    return row


class _Searches:
    """One stack's searches, one after another."""

    def __init__(self, repeats: int, quick: bool, estimate: int | None = None) -> None:
        self.done: list[Search] = []
        self.repeats = repeats
        self.quick = quick
        self.current: Search | None = self._new(None, estimate)

    def _new(self, previous: Search | None, first: int | None = None) -> Search:
        estimate = previous.estimate() if previous else None
        if estimate is not None:
            hi = estimate["hi_agents"] or estimate["lo_agents"]  # None: nothing failed
            first = round(math.sqrt(estimate["lo_agents"] * hi))
        if first is None:
            start, factor = START_AGENTS, 2.0
        else:
            start, factor = max(1, round(first / math.sqrt(REPEAT_FACTOR))), REPEAT_FACTOR
        return Search(
            start=start,
            factor=factor,
            # QUICK (CI smoke): one step per stack, enough to exercise every output.
            max_steps=1 if self.quick else MAX_STEPS,
            bisect=not self.quick,
        )

    def next_agents(self) -> int | None:
        while self.current is not None:
            agents = self.current.next_agents()
            if agents is not None:
                return agents
            self.done.append(self.current)
            # A search in which not even one agent held the SLO is not repeated: the next
            # would walk the same way down to the same answer.
            again = len(self.done) < self.repeats and self.current.estimate() is not None
            self.current = self._new(self.current) if again else None
        return None

    def record(self, row: dict[str, Any]) -> None:
        assert self.current is not None
        row["search"] = len(self.done)
        self.current.record(row)


def _search_all(
    ctx: Context, labels: dict[str, dict[str, Any]], plan: Plan, cpus: int
) -> dict[str, _Searches]:
    """Every stack's searches, interleaved: each round measures each stack once, so
    whatever else the shared machine is doing falls on all of them alike."""
    first = plan.first_estimates(cpus)
    searches = {
        label: _Searches(1 if ctx.quick else plan.repeats, ctx.quick, first.get(label))
        for label in labels
    }
    while True:
        todo = [(s, n) for s, r in searches.items() if (n := r.next_agents()) is not None]
        if not todo:
            return searches
        for label, agents in todo:
            searches[label].record(_step(ctx, plan, label, labels[label], agents))


def _median_of(steps: list[dict[str, Any]], get: Any) -> float | None:
    values = [v for s in steps if (v := get(s)) is not None]
    return statistics.median(values) if values else None


def summarize(label: str, processes: int, runs: list[Search]) -> dict[str, Any]:
    """A stack's row: the median capacity of its searches, the span of their brackets,
    and the CPU and memory measured at each search's highest step that held (medians)."""
    estimates = [e for s in runs if (e := s.estimate()) is not None]
    row: dict[str, Any] = {column: None for column in COLUMNS}
    row.update({"dispatcher": label, "processes": processes, "searches": len(runs)})
    if not estimates:
        row.update({"calls_per_s": 0.0, "calls_per_s_low": 0.0, "calls_per_s_high": 0.0})
        row["max_agents"] = 0
        return row
    steps = [e["step"] for e in estimates]
    resolution = max(e["resolution"] for e in estimates)
    row.update(
        {
            "calls_per_s": statistics.median(e["calls_per_s"] for e in estimates),
            "calls_per_s_low": min(e["low"] for e in estimates),
            "calls_per_s_high": max(e["high"] for e in estimates),
            "resolution_pct": resolution * 100 if math.isfinite(resolution) else None,
            "max_agents": statistics.median(e["lo_agents"] for e in estimates),
            "p99_ms": _median_of(steps, lambda s: s["p99_ms"]),
            "other_cores": _median_of(steps, lambda s: s["other_cores"]),
        }
    )
    for role in ("brain", "sidecar", "upstream"):
        row[f"{role}_cpu_s_per_1k"] = _median_of(steps, lambda s, r=role: s["cpu_s_per_1k"].get(r))
    # brain + sidecar CPU per call (µs) at each search's step: the spread for the headline.
    totals = [
        1000 * (s["cpu_s_per_1k"].get("brain", 0.0) + s["cpu_s_per_1k"].get("sidecar", 0.0))
        for s in steps
    ]
    row["total_cpu_us"] = statistics.median(totals)
    row["total_cpu_us_low"] = min(totals)
    row["total_cpu_us_high"] = max(totals)
    for role in ("brain", "sidecar"):
        row[f"{role}_peak_rss_mib"] = _median_of(steps, lambda s, r=role: s["peak_rss_mib"].get(r))
    return row


def compare(
    ours: dict[str, Any], theirs: dict[str, Any], goal: float, *, judged: bool
) -> tuple[bool | None, str, str]:
    """Whether ``ours`` has ``goal`` times ``theirs``'s capacity, judged on the error
    bars: met only if even the lowest ratio the bars allow reaches the goal, missed only if
    even the highest does not; otherwise the measurement cannot tell (None)."""
    mid = ours["calls_per_s"] / theirs["calls_per_s"] if theirs["calls_per_s"] else math.inf
    low = ours["calls_per_s_low"] / theirs["calls_per_s_high"] if theirs["calls_per_s_high"] else 0
    high = (
        ours["calls_per_s_high"] / theirs["calls_per_s_low"]
        if theirs["calls_per_s_low"]
        else math.inf
    )
    measured = (
        f"{mid:.2f}x ({ours['calls_per_s']:.0f} vs {theirs['calls_per_s']:.0f} calls/s; "
        f"error bars allow {low:.2f}x to {high:.2f}x)"
    )
    if not judged:
        return None, measured, "QUICK run: one step per stack, no search"
    if low >= goal:
        return True, measured, ""
    if high < goal:
        return False, measured, ""
    pairs = theirs.get("paired")
    if not pairs or pairs["stack"] != ours["dispatcher"] or pairs["goal"] != goal:
        return None, measured, "cannot tell: the error bars straddle the goal"
    measured = f"{measured}; {paired.describe(pairs)}"
    if pairs["met"]:
        return True, measured, "the error bars straddle the goal: every paired round confirms it"
    why = "cannot tell: the error bars straddle the goal and not every paired round confirms it"
    return None, measured, why


def _brief(search: Search) -> dict[str, Any] | None:
    """A search's estimate without its step (the step is in ``ramps``)."""
    estimate = search.estimate()
    return {k: v for k, v in estimate.items() if k != "step"} if estimate else None


def _pair(
    ctx: Context,
    plan: Plan,
    labels: dict[str, dict[str, Any]],
    searches: dict[str, _Searches],
    by: dict[str, dict[str, Any]],
    goals: list[tuple[str, float]],
) -> None:
    """Paired rounds (:mod:`.paired`) for each goal the error bars cannot tell, kept on
    the baseline's row as ``paired``; a QUICK run does one step of each, to exercise them."""
    for baseline, goal in goals:
        if compare(by["tandem"], by[baseline], goal, judged=not ctx.quick)[0] is not None:
            continue
        load = paired.failing_load([s.estimate() for s in searches[baseline].done])
        if load is None:
            continue
        ctx.log(f"  paired rounds: tandem against {baseline} at {goal:g}x its load")
        by[baseline]["paired"] = paired.run(
            lambda label, agents: _step(ctx, plan, label, labels[label], agents),
            stack="tandem",
            baseline=baseline,
            goal=goal,
            load=load,
            rounds=paired.QUICK_ROUNDS if ctx.quick else paired.ROUNDS,
            climbs=0 if ctx.quick else paired.MAX_CLIMBS,
        )


def run(ctx: Context, plan: Plan | None = None) -> ScenarioResult:
    plan = plan or Plan()
    n = len(cores())
    labels = plan.chosen(stacks(n, pin=ctx.pin), n)
    searches = _search_all(ctx, labels, plan, n)
    rows = [
        summarize(label, int(labels[label].get("processes", 1)), s.done)
        for label, s in searches.items()
    ]
    by = {row["dispatcher"]: row for row in rows}
    tandem = by["tandem"]
    for row in rows:
        other = row["calls_per_s"]
        row["tandem_ratio"] = (tandem["calls_per_s"] / other) if other else math.inf

    goals = [("python-naive", TARGET_VS_NAIVE), ("python-tuned", TARGET_VS_TUNED)]
    goals += [(label, TARGET_VS_TUNED_N) for label in labels if label.startswith("python-tuned x")]
    goals = [(label, goal) for label, goal in goals if label in by]
    _pair(ctx, plan, labels, searches, by, goals)
    targets = []
    for baseline, goal in goals:
        met, measured, why = compare(tandem, by[baseline], goal, judged=not ctx.quick)
        targets.append(
            Target(
                name=f"capacity vs {baseline}",
                goal=f">= {goal}x calls/s under p99 <= {SLO_P99_MS:g} ms",
                measured=measured,
                met=met,
                why=why,
            )
        )
    notes = [
        f"think time {THINK_MS} ms ± {THINK_JITTER:.0%} (uniform) per step, one `search` "
        "call (~100 KB JSON, output schema validated) per step; "
        f"SLO: tool-call p99 <= {SLO_P99_MS:g} ms with no failed call",
        f"calls_per_s: median of {plan.repeats if not ctx.quick else 1} searches, each bisected "
        f"until its bracket is within ±{TOLERANCE:.0%}; calls_per_s_low/high: the lowest "
        "passing and highest failing bracket ends of all searches (the error bar); "
        "resolution_pct: the widest bracket's half-width",
        "a target is met only if the ratio holds at both ends of the error bars, missed only "
        "if it fails at both; where they straddle it, it is met if every one of "
        f"{paired.ROUNDS} paired rounds confirms it: in each, the baseline from the fewest "
        f"agents its searches saw miss the SLO, up by x{paired.CLIMB:g} while it holds (at "
        f"most {paired.MAX_CLIMBS} times), and tandem at the goal times the agents the "
        "baseline missed at, right after; a round confirms when tandem holds the SLO there; "
        "otherwise the run cannot tell",
        f"python-tuned x{n}: {n} python-tuned processes, one per core, "
        + ("each pinned to its core with `taskset -c`" if ctx.pin else "not pinned (--no-pin)")
        + ", each given 1/N of the agents; the other stacks are not pinned",
        "CPU is per 1,000 calls at each search's highest step that held the SLO (median), by "
        "process: brain (agents + dispatcher; summed over processes), sidecar, upstream "
        "(nginx); the brain's share includes the agents' own loop, the same for every stack",
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
            "ramps": {
                label: [st for sr in s.done for st in sr.steps] for label, s in searches.items()
            },
            "searches": {label: [_brief(sr) for sr in s.done] for label, s in searches.items()},
            "think_ms": THINK_MS,
            "think_jitter": THINK_JITTER,
            "slo_p99_ms": SLO_P99_MS,
            "tolerance": TOLERANCE,
            "cores": n,
            "pinned": ctx.pin,
            # None: nginx shared the cores under test (make bench); else the CPUs it had.
            "upstream_cpus": ctx.nginx.cpus,
        },
    )
