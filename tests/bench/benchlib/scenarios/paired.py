"""Paired rounds: a capacity ratio put to the test directly, when the error bars cannot tell.

Scenario 1's error bars (:mod:`.capacity`) span all of a stack's searches, and the
searches of two stacks ran minutes apart on a shared machine; a ratio judged on them sets
tandem's slowest moment against the baseline's fastest, so a goal near the median
ratio stays "cannot tell" however often it is measured. Paired rounds ask the question
the goal asks (can tandem carry ``goal`` times the load the baseline cannot?) with both
stacks measured at nearly the same moment:

1. the baseline at ``L`` agents, the fewest that its searches saw miss the SLO (the
   median of their brackets' failing ends), and
2. tandem at ``ceil(goal x L)`` agents, a step before or after (the order alternates
   from round to round, so neither always gets the fresher machine).

Every stack runs the same agents (think time, call, document), so the offered load is
proportional to the agents. A round in which the baseline misses the SLO at ``L`` while
tandem holds it at ``goal x L`` shows tandem's capacity above ``goal`` times the
baseline's at that moment: it *confirms*. A round in which the baseline holds at ``L``
and tandem misses at ``goal x L`` shows the opposite: it *refutes*. A round where both
hold or both miss shows neither. The goal is met when every round confirms, missed when
every round refutes, and otherwise the run cannot tell. Each step is an ordinary
scenario 1 step (warm-up, window, the re-measure when other processes took the
machine), and the calls/s ratio each round measured is reported beside its verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

ROUNDS = 3
QUICK_ROUNDS = 1

#: A step: (stack label, agents) -> scenario 1's step row (``holds_slo``, ``calls_per_s``...).
Step = Callable[[str, int], dict[str, Any]]

CONFIRMS, REFUTES, NEITHER = "confirms", "refutes", "neither"


def failing_load(estimates: list[dict[str, Any] | None]) -> int | None:
    """``L``: the median of the searches' failing ends (their passing ends where nothing
    failed, as in a QUICK run's single step); None when no search held at all."""
    ends = [e["hi_agents"] or e["lo_agents"] for e in estimates if e is not None]
    return round(statistics.median(ends)) if ends else None


def verdict(baseline_holds: bool, stack_holds: bool) -> str:
    """What one round shows (see the module's docstring)."""
    if stack_holds and not baseline_holds:
        return CONFIRMS
    if baseline_holds and not stack_holds:
        return REFUTES
    return NEITHER


def judge(verdicts: list[str]) -> bool | None:
    """Met when every round confirms, missed when every round refutes, else None."""
    if verdicts and all(v == CONFIRMS for v in verdicts):
        return True
    if verdicts and all(v == REFUTES for v in verdicts):
        return False
    return None


def run(
    step: Step, *, stack: str, baseline: str, goal: float, load: int, rounds: int
) -> dict[str, Any]:
    """``rounds`` paired rounds of ``stack`` at ``goal x load`` agents against
    ``baseline`` at ``load``; the outcome, kept on the baseline's capacity row."""
    ours = math.ceil(goal * load)
    out: list[dict[str, Any]] = []
    for i in range(rounds):
        order = [(baseline, load), (stack, ours)]
        if i % 2:
            order.reverse()
        rows = {label: step(label, agents) for label, agents in order}
        theirs_row, ours_row = rows[baseline], rows[stack]
        rate = theirs_row["calls_per_s"]
        out.append(
            {
                "first": order[0][0],
                "baseline": theirs_row,
                "stack": ours_row,
                "calls_per_s_ratio": ours_row["calls_per_s"] / rate if rate else math.inf,
                "verdict": verdict(theirs_row["holds_slo"], ours_row["holds_slo"]),
            }
        )
    return {
        "stack": stack,
        "baseline": baseline,
        "goal": goal,
        "baseline_agents": load,
        "stack_agents": ours,
        "rounds": out,
        "met": judge([r["verdict"] for r in out]),
    }


def describe(paired: dict[str, Any]) -> str:
    """One line for a target's ``measured``."""
    rounds = paired["rounds"]
    count = {v: sum(r["verdict"] == v for r in rounds) for v in (CONFIRMS, REFUTES, NEITHER)}
    ratios = [r["calls_per_s_ratio"] for r in rounds]
    return (
        f"paired rounds: {paired['stack']} at {paired['stack_agents']:,} agents against "
        f"{paired['baseline']} at {paired['baseline_agents']:,}, {len(rounds)} rounds: "
        f"{count[CONFIRMS]} confirm (it held the SLO, the baseline missed it), "
        f"{count[REFUTES]} refute, {count[NEITHER]} neither; calls/s ratio "
        f"{min(ratios):.2f}x to {max(ratios):.2f}x"
    )
