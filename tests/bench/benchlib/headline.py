"""The headline (issue 12): one table per stack from scenarios 1, 3 and 8, the goals it
meets or misses, and a projection to pods with more cores.

Columns, per stack:

* capacity: calls/s under the SLO (scenario 1: median of its searches, with the error
  bar's ends);
* CPU per call across the pod's processes (brain + sidecar), at capacity on the search
  document (scenario 1) and on the catalog document (scenario 8); the upstream apart;
* calls/s per Python core: 1 / brain CPU per call at capacity;
* peak RSS per in-flight call: brain + sidecar peak over the calls in flight (scenario 3);
* projected calls/s on 4, 8 and 16 cores (:func:`project`).
"""

from __future__ import annotations

import math
from typing import Any

from .scenarios import ScenarioResult, Target
from .scenarios.capacity import SLO_P99_MS, TARGET_VS_TUNED_N, compare

#: Issue 12: tandem's total CPU per call <= this times python-tuned's.
TARGET_CPU_VS_TUNED = 0.5
PROJECTED_CORES = (4, 8, 16)

COLUMNS = [
    "dispatcher",
    "calls_per_s",
    "calls_per_s_low",
    "calls_per_s_high",
    "cpu_us_per_call",
    "catalog_cpu_us_per_call",
    "upstream_us_per_call",
    "calls_per_s_per_python_core",
    "kib_per_in_flight_call",
    *(f"projected_{c}_cores" for c in PROJECTED_CORES),
]


def project(
    cores: int, *, python: int, brain_s: float, sidecar_s: float, efficiency: float
) -> float:
    """Calls/s a pod with ``cores`` cores sustains under the SLO:

        efficiency x min(python / brain_s, cores / (brain_s + sidecar_s))

    ``python`` processes each run on at most one core (the GIL), so the brains together
    can do at most ``python / brain_s`` calls/s; all processes together at most
    ``cores / (brain_s + sidecar_s)``. ``efficiency`` is the share of that ideal the stack
    reached under the SLO on the measured machine (where the upstream shared the cores)."""
    total = brain_s + sidecar_s
    if brain_s <= 0 or total <= 0:
        return math.nan
    return efficiency * min(python / brain_s, cores / total)


def efficiency(
    row: dict[str, Any], measured_cores: int, python: int, *, upstream_shared: bool = True
) -> float:
    """The share of :func:`project`'s ideal that a capacity row reached on its
    ``measured_cores``; the upstream's CPU counts against the cores where it shared them."""
    brain = (row.get("brain_cpu_s_per_1k") or 0.0) / 1000
    sidecar = (row.get("sidecar_cpu_s_per_1k") or 0.0) / 1000
    upstream = (row.get("upstream_cpu_s_per_1k") or 0.0) / 1000 if upstream_shared else 0.0
    if brain <= 0:
        return math.nan
    ideal = min(python / brain, measured_cores / (brain + sidecar + upstream))
    return float(row["calls_per_s"]) / ideal


def build(results: list[ScenarioResult], *, quick: bool) -> ScenarioResult | None:
    """The headline, or None when scenario 1 did not run."""
    by_key = {r.key: r for r in results}
    capacity = by_key.get("1_capacity")
    if capacity is None:
        return None
    measured_cores = int(capacity.detail.get("cores", 1))
    memory = {r["dispatcher"]: r for r in by_key["3_memory"].rows} if "3_memory" in by_key else {}
    cpu8 = (
        {(r["dispatcher"], r["document"]): r for r in by_key["8_cpu_per_call"].rows}
        if "8_cpu_per_call" in by_key
        else {}
    )
    rows: list[dict[str, Any]] = []
    projections: list[dict[str, Any]] = []
    for cap in capacity.rows:
        label = cap["dispatcher"]
        brain_s = (cap.get("brain_cpu_s_per_1k") or 0.0) / 1000
        sidecar_s = (cap.get("sidecar_cpu_s_per_1k") or 0.0) / 1000
        mem = memory.get(label, {})
        catalog = cpu8.get((label, "catalog"))
        bytes_per_call = mem.get("bytes_per_call")
        row: dict[str, Any] = {
            "dispatcher": label,
            "calls_per_s": cap["calls_per_s"],
            "calls_per_s_low": cap["calls_per_s_low"],
            "calls_per_s_high": cap["calls_per_s_high"],
            "cpu_us_per_call": cap.get("total_cpu_us"),
            "catalog_cpu_us_per_call": catalog["total_us_per_call"] if catalog else None,
            "upstream_us_per_call": (cap.get("upstream_cpu_s_per_1k") or 0.0) * 1000
            if cap.get("upstream_cpu_s_per_1k") is not None
            else None,
            "calls_per_s_per_python_core": (1 / brain_s) if brain_s > 0 else None,
            "kib_per_in_flight_call": bytes_per_call / 1024 if bytes_per_call else None,
        }
        processes = int(cap.get("processes") or 1)
        # python-tuned xN grows a process per core; the others keep one Python process.
        scales = processes > 1
        share = efficiency(cap, measured_cores, processes) if brain_s > 0 else math.nan
        for c in PROJECTED_CORES:
            row[f"projected_{c}_cores"] = project(
                c,
                python=c if scales else 1,
                brain_s=brain_s,
                sidecar_s=sidecar_s,
                efficiency=share,
            )
        rows.append(row)
        projections.append(
            {
                "dispatcher": label,
                "python_processes": "one per core" if scales else "1",
                "brain_us": brain_s * 1e6,
                "sidecar_us": sidecar_s * 1e6,
                "efficiency": share,
            }
        )
    tandem = next((r for r in capacity.rows if r["dispatcher"] == "tandem"), None)
    if tandem is not None and tandem.get("brain_cpu_s_per_1k"):
        # Not a measured stack: tandem with one brain process per core sharing the sidecar,
        # at tandem's measured CPU per call and efficiency (what the design allows).
        brain_s = tandem["brain_cpu_s_per_1k"] / 1000
        sidecar_s = (tandem.get("sidecar_cpu_s_per_1k") or 0.0) / 1000
        share = efficiency(tandem, measured_cores, 1)
        extra: dict[str, Any] = {c: None for c in COLUMNS}
        extra["dispatcher"] = "tandem, a brain per core (projection only)"
        for c in PROJECTED_CORES:
            extra[f"projected_{c}_cores"] = project(
                c, python=c, brain_s=brain_s, sidecar_s=sidecar_s, efficiency=share
            )
        rows.append(extra)
    targets = _targets(capacity, rows, cpu8, quick=quick)
    notes = [
        f"calls_per_s: scenario 1 (p99 <= {SLO_P99_MS:g} ms, search document), median of "
        "its searches; _low/_high: the error bar (lowest passing and highest failing bracket "
        "ends over all searches)",
        "cpu_us_per_call: brain + sidecar CPU per call at capacity (search document, "
        "scenario 1); catalog_cpu_us_per_call: the same on the catalog document at 64 in "
        "flight (scenario 8); upstream_us_per_call: nginx, apart (not in the pod)",
        "calls_per_s_per_python_core = 1 / brain CPU per call at capacity: what one Python "
        "process (one core, the GIL) can carry",
        "kib_per_in_flight_call: brain + sidecar peak RSS over the calls in flight "
        "(scenario 3, 10,000 calls on a slow upstream; QUICK: 500)",
        "projected_N_cores = efficiency x min(P / brain, N / (brain + sidecar)), CPU per "
        "call in seconds, P = Python processes (1; one per core for python-tuned xN), "
        f"efficiency = measured capacity / the same formula on this {measured_cores}-core "
        "machine with the upstream's CPU added (it shared the cores). Projected, not "
        "measured.",
    ]
    return ScenarioResult(
        key="0_headline",
        title="Headline: capacity under the SLO, CPU and memory per call, per stack",
        columns=COLUMNS,
        rows=rows,
        targets=targets,
        notes=notes,
        detail={
            "projection": projections,
            "measured_cores": measured_cores,
            "slo_p99_ms": SLO_P99_MS,
        },
    )


def _targets(
    capacity: ScenarioResult,
    rows: list[dict[str, Any]],
    cpu8: dict[tuple[str, str], dict[str, Any]],
    *,
    quick: bool,
) -> list[Target]:
    by = {r["dispatcher"]: r for r in capacity.rows}
    targets: list[Target] = []
    tandem = by.get("tandem")
    multi = [label for label in by if label.startswith("python-tuned x")]
    if tandem is not None:
        for label in multi:
            met, measured, why = compare(tandem, by[label], TARGET_VS_TUNED_N, judged=not quick)
            targets.append(
                Target(
                    name=f"capacity vs {label} (same cores)",
                    goal=f">= {TARGET_VS_TUNED_N:g}x calls/s under the SLO",
                    measured=measured,
                    met=met,
                    why=why,
                )
            )
    tuned = by.get("python-tuned")
    if tandem is not None and tuned is not None and tuned.get("total_cpu_us"):
        # Judged on the spread over the searches' steps, like capacity on its error bars.
        mid = tandem["total_cpu_us"] / tuned["total_cpu_us"]
        low = tandem["total_cpu_us_low"] / tuned["total_cpu_us_high"]
        high = tandem["total_cpu_us_high"] / tuned["total_cpu_us_low"]
        if quick:
            met, why = None, "QUICK run: too few calls for 10 ms CPU ticks"
        elif high <= TARGET_CPU_VS_TUNED:
            met, why = True, ""
        elif low > TARGET_CPU_VS_TUNED:
            met, why = False, ""
        else:
            met, why = None, "cannot tell: the spread over the searches straddles the goal"
        targets.append(
            Target(
                name="total CPU per call vs python-tuned (search, at capacity)",
                goal=f"<= {TARGET_CPU_VS_TUNED:g}x",
                measured=(
                    f"{mid:.2f}x ({tandem['total_cpu_us']:.0f} vs {tuned['total_cpu_us']:.0f} µs;"
                    f" spread {low:.2f}x to {high:.2f}x)"
                ),
                met=met,
                why=why,
            )
        )
    ours, theirs = cpu8.get(("tandem", "catalog")), cpu8.get(("python-tuned", "catalog"))
    if ours and theirs and theirs["total_us_per_call"]:
        ratio = ours["total_us_per_call"] / theirs["total_us_per_call"]
        targets.append(
            Target(
                name="total CPU per call vs python-tuned (catalog, scenario 8)",
                goal=f"<= {TARGET_CPU_VS_TUNED:g}x",
                measured=(
                    f"{ratio:.2f}x ({ours['total_us_per_call']:.0f} vs "
                    f"{theirs['total_us_per_call']:.0f} µs)"
                ),
                met=None if quick else ratio <= TARGET_CPU_VS_TUNED,
                why="QUICK run: too few calls for 10 ms CPU ticks" if quick else "",
            )
        )
    return targets
