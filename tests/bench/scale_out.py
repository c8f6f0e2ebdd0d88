"""Scenario 1 on a larger machine: capacity at pinned core counts, measured beside projected.

    .venv/bin/python tests/bench/scale_out.py --cores 2,4,8 [--upstream-cpus 12-15]
        [--estimate tandem=6000 --estimate "python-tuned xN=2900"] [--results DIR]

``make bench`` measures on the machine it has (2 cores here) and projects to larger pods
on paper (:func:`benchlib.headline.project`). This script measures instead, for issue 12:

* for each core count N, in the order given, the stacks run on the first N CPUs of this
  process's affinity (``sched_setaffinity``, inherited by the sidecar and the agent
  processes; python-tuned xN pins one process per CPU with ``taskset -c``); the harness
  shares those CPUs, as in ``make bench``;
* the stacks: tandem (one brain process), python-tuned xN (a process per core) and, from
  8 cores, tandem xB: a brain process per 4 cores on the one sidecar (the brain is about
  a quarter of tandem's CPU per call, so one brain caps a large pod);
* nginx, the upstream, runs on CPUs of its own (``--upstream-cpus``, default the last
  quarter of the affinity), a worker per CPU: in a cluster the tool services are
  elsewhere, and an upstream on the cores under test would cap every stack alike;
* capacity is searched exactly as in scenario 1 (bisected to ±5%), ``--repeats``
  searches per stack; the first search of the first core count starts from
  ``--estimate`` (agents) when given, else doubles up from 8 agents;
* the first core count's measurement gives the projection for the others: its CPU per
  call and efficiency in :func:`benchlib.headline.project`, the upstream left out since
  it has its own CPUs. Later searches start from that projection.

Writes ``9_scale_out.json`` and ``.md`` (and each core count's capacity result,
``1_capacity_<N>c.json``) to ``--results`` after every core count, so that a run cut short
keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import report
from benchlib.dispatchers import multi_label
from benchlib.headline import efficiency, project
from benchlib.nginx import Nginx
from benchlib.runner import REPO, open_files_to_the_limit
from benchlib.scenarios import Context, ScenarioResult, Target, capacity

#: Stacks compared by default: issue 12's goal is tandem against python-tuned run as one
#: process per core, on the same cores; ``tandem xB`` only where it has 2 or more brains.
STACKS = ("tandem", "python-tuned xN", "tandem xB")

COLUMNS = [
    "cores",
    "dispatcher",
    "processes",
    "calls_per_s",
    "calls_per_s_low",
    "calls_per_s_high",
    "projected_calls_per_s",
    "measured_vs_projected",
    "max_agents",
    "p99_ms",
    "brain_us_per_call",
    "sidecar_us_per_call",
    "upstream_us_per_call",
    "tandem_ratio",
]


def cpu_list(text: str) -> list[int]:
    """``0-3,8`` -> ``[0, 1, 2, 3, 8]`` (taskset's syntax)."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cores", default="2,4,8", help="core counts, e.g. 2,4,8")
    parser.add_argument("--upstream-cpus", type=cpu_list, help="nginx's CPUs, e.g. 12-15")
    parser.add_argument(
        "--shared-upstream",
        action="store_true",
        help="nginx shares the CPUs under test, unpinned, as in make bench (small machines)",
    )
    parser.add_argument("--stacks", default=",".join(STACKS), help="labels, comma-separated")
    parser.add_argument("--repeats", type=int, default=1, help="searches per stack and count")
    parser.add_argument(
        "--estimate",
        action="append",
        default=[],
        metavar="LABEL=AGENTS",
        help="where the first core count's search starts, per stack",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each window")
    parser.add_argument("--window", type=float, default=6.0, help="each step's measured seconds")
    parser.add_argument("--quick", action="store_true", help="one step per stack (smoke)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--sidecar-bin", type=Path, default=REPO / "sidecar-rs/target/release/sidecar"
    )
    return parser.parse_args(argv)


def plan_cpus(
    available: list[int], counts: list[int], upstream: list[int] | None, *, shared: bool = False
) -> tuple[list[int], list[int] | None]:
    """The CPUs the stacks take (the first ``max(counts)`` not given to nginx) and
    nginx's (None: it shares them); raises ValueError when they do not fit."""
    if shared:
        if max(counts) > len(available):
            raise ValueError(f"{max(counts)} cores do not fit in {len(available)} CPUs")
        return available, None
    if upstream is None:
        upstream = available[-max(1, len(available) // 4) :]
    missing = sorted(set(upstream) - set(available))
    if missing:
        raise ValueError(f"--upstream-cpus {missing} are not in this process's affinity")
    stack = [c for c in available if c not in upstream]
    if max(counts) > len(stack):
        raise ValueError(
            f"{max(counts)} cores for the stacks and {len(upstream)} for nginx do not fit in "
            f"the {len(available)} CPUs this process may use"
        )
    return stack, upstream


def _per_call_us(row: dict[str, Any], role: str) -> float | None:
    value = row.get(f"{role}_cpu_s_per_1k")
    return value * 1000 if value is not None else None


def projection(
    base: dict[str, Any], base_cores: int, cores: int, python: int, *, upstream_shared: bool
) -> float:
    """Calls/s on ``cores`` with ``python`` Python processes, projected from ``base`` (a
    capacity row measured on ``base_cores``) by :func:`benchlib.headline.project`."""
    brain_s = (base.get("brain_cpu_s_per_1k") or 0.0) / 1000
    sidecar_s = (base.get("sidecar_cpu_s_per_1k") or 0.0) / 1000
    if brain_s <= 0 or not base.get("calls_per_s"):
        return math.nan
    measured_python = int(base.get("processes") or 1)
    share = efficiency(base, base_cores, measured_python, upstream_shared=upstream_shared)
    return project(cores, python=python, brain_s=brain_s, sidecar_s=sidecar_s, efficiency=share)


def generic(label: str) -> str:
    """A stack's name across core counts (``python-tuned x8`` -> ``python-tuned xN``)."""
    if label.startswith("python-tuned x"):
        return "python-tuned xN"
    if label.startswith("tandem x"):
        return "tandem xB"
    return label


def _base_row(stack: str, base: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """``stack``'s row on the first count, or plain tandem's for tandem xB (one brain there)."""
    return base.get(stack) or (base.get("tandem") if stack == "tandem xB" else None)


def _projected(
    stack: str, base: dict[str, dict[str, Any]], base_cores: int, cores: int, shared: bool
) -> float:
    """``stack``'s projection on ``cores`` from the first count's rows: python-tuned xN
    grows a process per core, tandem keeps one brain, tandem xB has a brain per
    CORES_PER_BRAIN cores (projected from plain tandem's row when the first count had one
    brain)."""
    python = {"python-tuned xN": cores, "tandem xB": capacity.brains(cores)}.get(stack, 1)
    first = _base_row(stack, base)
    if first is None:
        return math.nan
    return projection(first, base_cores, cores, python, upstream_shared=shared)


def rows_for(
    cores: int,
    result: ScenarioResult,
    base: dict[str, dict[str, Any]],
    base_cores: int,
    *,
    upstream_shared: bool = False,
) -> list[dict[str, Any]]:
    """This core count's table rows; ``base`` holds the first count's rows by stack."""
    rows = []
    for cap in result.rows:
        projected = (
            _projected(generic(cap["dispatcher"]), base, base_cores, cores, upstream_shared)
            if cores != base_cores
            else math.nan
        )
        known = math.isfinite(projected)
        rows.append(
            {
                "cores": cores,
                "dispatcher": cap["dispatcher"],
                "processes": cap.get("processes"),
                "calls_per_s": cap["calls_per_s"],
                "calls_per_s_low": cap["calls_per_s_low"],
                "calls_per_s_high": cap["calls_per_s_high"],
                "projected_calls_per_s": projected if known else None,
                "measured_vs_projected": cap["calls_per_s"] / projected if known else None,
                "max_agents": cap.get("max_agents"),
                "p99_ms": cap.get("p99_ms"),
                "brain_us_per_call": _per_call_us(cap, "brain"),
                "sidecar_us_per_call": _per_call_us(cap, "sidecar"),
                "upstream_us_per_call": _per_call_us(cap, "upstream"),
                "tandem_ratio": cap.get("tandem_ratio"),
            }
        )
    return rows


def next_estimates(
    base: dict[str, dict[str, Any]],
    base_cores: int,
    cores: int,
    stacks: list[str],
    *,
    upstream_shared: bool = False,
) -> dict[str, int]:
    """Where each stack's search on ``cores`` starts: its (or tandem's) agents on the
    first count scaled by the projected rate (agents follow the rate: think time
    dominates)."""
    out = {}
    for stack in stacks:
        row = _base_row(stack, base)
        projected = _projected(stack, base, base_cores, cores, upstream_shared)
        if row and row.get("max_agents") and row.get("calls_per_s") and math.isfinite(projected):
            out[stack] = max(1, round(row["max_agents"] * projected / row["calls_per_s"]))
    return out


def parse_estimates(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        label, sep, agents = item.rpartition("=")
        if not sep or not label or not agents.isdigit():
            raise ValueError(f"--estimate wants LABEL=AGENTS, got {item!r}")
        out[label] = int(agents)
    return out


def _targets(rows: list[dict[str, Any]], judged: bool) -> list[Target]:
    """Issue 12's capacity goal at each core count, judged on the error bars, for tandem
    and (where it ran) tandem with a brain per CORES_PER_BRAIN cores."""
    targets = []
    for cores in dict.fromkeys(r["cores"] for r in rows):
        at = {generic(r["dispatcher"]): r for r in rows if r["cores"] == cores}
        theirs = at.get("python-tuned xN")
        for ours in ("tandem", "tandem xB"):
            if theirs is None or ours not in at:
                continue
            met, measured, why = capacity.compare(
                at[ours], theirs, capacity.TARGET_VS_TUNED_N, judged=judged
            )
            targets.append(
                Target(
                    name=f"{at[ours]['dispatcher']} vs {theirs['dispatcher']}, {cores} cores",
                    goal=f">= {capacity.TARGET_VS_TUNED_N}x calls/s under p99 <= "
                    f"{capacity.SLO_P99_MS:g} ms",
                    measured=measured,
                    met=met,
                    why=why,
                )
            )
    return targets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # In the order given: the first is the base of the projections (a short lease can
    # measure 2,8,4 to be sure of the largest).
    counts = [int(c) for c in args.cores.split(",")]
    if min(counts) < 2:
        print("--cores: python-tuned xN needs at least 2 cores")
        return 2
    try:
        stack_cpus, upstream_cpus = plan_cpus(
            sorted(os.sched_getaffinity(0)),
            counts,
            args.upstream_cpus,
            shared=args.shared_upstream,
        )
        estimates = parse_estimates(args.estimate)
    except ValueError as exc:
        print(exc)
        return 2
    if not args.sidecar_bin.exists():
        print(f"no sidecar at {args.sidecar_bin}: build it with `make sidecar-release`")
        return 2
    open_files_to_the_limit()
    args.results.mkdir(parents=True, exist_ok=True)
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    base: dict[str, dict[str, Any]] = {}
    meta = {"machine": report.machine(), "upstream_cpus": upstream_cpus, "stacks": stacks}
    where = upstream_cpus if upstream_cpus else "the same CPUs, unpinned"
    print(f"==> stacks on CPUs {stack_cpus[: max(counts)]}, nginx on {where}", flush=True)
    shared = upstream_cpus is None
    original = os.sched_getaffinity(0)
    try:
        with Nginx(cpus=upstream_cpus) as nginx:
            for cores in counts:
                os.sched_setaffinity(0, stack_cpus[:cores])
                if cores != counts[0]:
                    estimates = next_estimates(
                        base, counts[0], cores, stacks, upstream_shared=shared
                    )
                print(f"==> {cores} cores: first estimates {estimates or 'none'}", flush=True)
                ctx = Context(
                    quick=args.quick,
                    nginx=nginx,
                    sidecar_bin=args.sidecar_bin.resolve(),
                    results_dir=args.results,
                    repo=REPO,
                )
                plan = capacity.Plan(
                    stacks=stacks,
                    repeats=args.repeats,
                    estimates=estimates,
                    warmup_s=args.warmup,
                    measure_s=args.window,
                )
                result = capacity.run(ctx, plan)
                result.key = f"1_capacity_{cores}c"
                report.write_result(result, args.results)
                if cores == counts[0]:
                    base = {generic(r["dispatcher"]): r for r in result.rows}
                rows.extend(rows_for(cores, result, base, counts[0], upstream_shared=shared))
                _write(args, rows, counts, meta, started)
    finally:
        # This process (a test's, say) gets its CPUs back.
        os.sched_setaffinity(0, original)
    return 0


def _write(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    counts: list[int],
    meta: dict[str, Any],
    started: float,
) -> None:
    meta = {
        **meta,
        "finished_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.monotonic() - started, 1),
    }
    label = multi_label(counts[0])
    result = ScenarioResult(
        key="9_scale_out",
        title="Scale-out: scenario 1 at pinned core counts, measured beside projected",
        columns=COLUMNS,
        rows=rows,
        targets=_targets(rows, judged=not args.quick),
        notes=[
            f"stacks on the first N CPUs of {meta['machine']['cores']} "
            f"({meta['machine']['cpu_model']}); "
            + (
                f"nginx on CPUs {meta['upstream_cpus']}, a worker per CPU"
                if meta["upstream_cpus"]
                else "nginx on the same CPUs, unpinned (--shared-upstream)"
            )
            + "; searched as in scenario 1 "
            f"({args.repeats} search(es) per stack and core count, bisected to ±5%; "
            f"{args.warmup:g} s warm-up and {args.window:g} s measured per step)",
            f"projected_calls_per_s: from the {counts[0]}-core row of the same stack "
            "(headline.project: efficiency x min(P / brain, N / (brain + sidecar)), CPU per "
            "call and efficiency measured there, the upstream's CPU counted only where it "
            "shared the CPUs); python-tuned xN "
            f"({label} at {counts[0]} cores) grows a process per core, tandem keeps one brain",
            "tandem_ratio: tandem's calls/s over this row's, at the same core count",
        ],
        detail=meta,
    )
    report.write_result(result, args.results)
    (args.results / "9_scale_out.md").write_text(report.markdown_section(result) + "\n")
    print(report.markdown_section(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
