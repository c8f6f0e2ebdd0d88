"""Paired rounds: a capacity ratio put to the test directly, when the error bars cannot tell.

Scenario 1's error bars (:mod:`.capacity`) span all of a stack's searches, and the
searches of two stacks ran minutes apart on a shared machine; a ratio judged on them sets
tandem's slowest moment against the baseline's fastest, so a goal near the median
ratio stays "cannot tell" however often it is measured. Paired rounds ask the question
the goal asks (does tandem carry ``goal`` times a load the baseline cannot?) with both
stacks measured one right after the other. Each round:

1. finds a load the baseline cannot carry *now*: it runs the baseline at ``L`` agents,
   the fewest its searches saw miss the SLO (the median of their brackets' failing
   ends), and while it holds, again at :data:`CLIMB` times as many, at most
   :data:`MAX_CLIMBS` times (its capacity moves with the machine, and at ``L`` it holds
   about as often as not);
2. runs tandem at ``ceil(goal x F)`` agents right after the baseline's step that missed
   at ``F``.

Every stack runs the same agents (think time, call, document), so the offered load is
proportional to the agents. A round in which the baseline misses the SLO at ``F`` and
tandem holds it at ``goal x F`` shows tandem's capacity above ``goal`` times the
baseline's at that moment: it *confirms*. The goal is met when every round confirms;
otherwise the rounds decide nothing (a round where tandem misses shows only that ``F``
was above the baseline's capacity by less than ``goal`` requires, not that tandem has
less: a miss is for the error bars to show). Each step is an ordinary scenario 1 step
(warm-up, window, the re-measure when other processes took the machine), and the
calls/s ratio each round measured is reported beside its verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

ROUNDS = 3
QUICK_ROUNDS = 1
#: While the baseline holds, the next try has this many times its agents (twice the
#: search's tolerance), at most MAX_CLIMBS times.
CLIMB = 1.1
MAX_CLIMBS = 3

#: A step: (stack label, agents) -> scenario 1's step row (``holds_slo``, ``calls_per_s``...).
Step = Callable[[str, int], dict[str, Any]]

#: What a round shows: tandem held at goal x F; tandem missed there; or the baseline held
#: at every load it was given, so tandem did not run.
CONFIRMS, MISSED, BASELINE_HELD = "confirms", "tandem missed", "baseline held"


def failing_load(estimates: list[dict[str, Any] | None]) -> int | None:
    """``L``: the median of the searches' failing ends (their passing ends where nothing
    failed, as in a QUICK run's single step); None when no search held at all."""
    ends = [e["hi_agents"] or e["lo_agents"] for e in estimates if e is not None]
    return round(statistics.median(ends)) if ends else None


def judge(verdicts: list[str]) -> bool | None:
    """Met when every round confirms; otherwise the rounds decide nothing (None)."""
    return True if verdicts and all(v == CONFIRMS for v in verdicts) else None


def _round(
    step: Step, stack: str, baseline: str, goal: float, load: int, climbs: int
) -> dict[str, Any]:
    tried: list[dict[str, Any]] = []
    for _ in range(climbs + 1):
        tried.append(step(baseline, load))
        if not tried[-1]["holds_slo"]:
            break
        load = max(load + 1, math.ceil(load * CLIMB))
    missed = tried[-1]
    if missed["holds_slo"]:
        return {
            "baseline": tried,
            "stack": None,
            "calls_per_s_ratio": None,
            "verdict": BASELINE_HELD,
        }
    ours = step(stack, math.ceil(goal * missed["agents"]))
    rate = missed["calls_per_s"]
    return {
        "baseline": tried,
        "stack": ours,
        "calls_per_s_ratio": ours["calls_per_s"] / rate if rate else math.inf,
        "verdict": CONFIRMS if ours["holds_slo"] else MISSED,
    }


def run(
    step: Step,
    *,
    stack: str,
    baseline: str,
    goal: float,
    load: int,
    rounds: int,
    climbs: int = MAX_CLIMBS,
) -> dict[str, Any]:
    """``rounds`` paired rounds of ``stack`` against ``baseline``, starting the baseline
    at ``load``; the outcome, kept on the baseline's capacity row."""
    out = [_round(step, stack, baseline, goal, load, climbs) for _ in range(rounds)]
    return {
        "stack": stack,
        "baseline": baseline,
        "goal": goal,
        "baseline_agents": load,
        "rounds": out,
        "met": judge([r["verdict"] for r in out]),
    }


def describe(paired: dict[str, Any]) -> str:
    """One line for a target's ``measured``."""
    rounds = paired["rounds"]
    count = {v: sum(r["verdict"] == v for r in rounds) for v in (CONFIRMS, MISSED, BASELINE_HELD)}
    pairs = [
        f"{r['baseline'][-1]['agents']:,} / {r['stack']['agents']:,} agents "
        f"({r['calls_per_s_ratio']:.2f}x calls/s, {r['verdict']})"
        for r in rounds
        if r["stack"] is not None
    ]
    return (
        f"paired rounds against {paired['baseline']} (missed at / {paired['stack']} at): "
        + ("; ".join(pairs) or "none ran")
        + f"; {count[CONFIRMS]} of {len(rounds)} confirm"
        + (
            f", in {count[BASELINE_HELD]} the baseline held throughout"
            if count[BASELINE_HELD]
            else ""
        )
    )
