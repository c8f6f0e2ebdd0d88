"""Scenario 8: CPU per validated ~100 KB call, on two documents of different shapes.

Every stack runs the same number of calls back to back, ``CONCURRENCY`` in flight (split
between the processes of ``python-tuned xN``), once on the search document and once on the
catalog document (unicode, escapes, a ``$ref`` schema; :mod:`benchlib.documents`), so no
CPU figure rests on one document. Reported per call, by process: brain (the agent
process(es)), sidecar, their total, and the upstream (nginx) apart.

Targets (issues 11 and 12, ratios against python-tuned in the same run, per document):
total brain + sidecar CPU per call <= 0.5x python-tuned's, and the sidecar's alone <=
0.35x python-tuned's whole process.
"""

from __future__ import annotations

from typing import Any

from ..dispatchers import stacks
from ..runner import cores
from ..tools import DOCUMENT_TOOLS
from .base import Context, ScenarioResult, Target, us

CONCURRENCY = 64
CALLS = 4000
QUICK_CALLS = 150
#: python-naive spends ~20 ms of CPU per 100 KB call: fewer calls keep its rows short.
NAIVE_CALLS = 400
TARGET_TOTAL_VS_TUNED = 0.5
TARGET_SIDECAR_VS_TUNED = 0.35

COLUMNS = [
    "dispatcher",
    "document",
    "calls",
    "errors",
    "calls_per_s",
    "brain_us_per_call",
    "sidecar_us_per_call",
    "total_us_per_call",
    "upstream_us_per_call",
    "vs_python_tuned",
    "other_cores",
]


def run(ctx: Context) -> ScenarioResult:
    rows: list[dict[str, Any]] = []
    # QUICK (CI smoke): the catalog only; scenarios 1 and 4 run the search document.
    documents = DOCUMENT_TOOLS[-1:] if ctx.quick else DOCUMENT_TOOLS
    for tool in documents:
        for label, stack in stacks(len(cores()), pin=ctx.pin).items():
            if ctx.quick and label == "python-naive":
                continue  # QUICK: its path is the others' (scenario 1 runs it)
            calls = QUICK_CALLS if ctx.quick else CALLS
            if label == "python-naive":
                calls = min(calls, NAIVE_CALLS)
            config = {
                **stack,
                "mode": "burst",
                "tool": tool,
                "concurrency": CONCURRENCY,
                "warmup_calls": max(20, calls // 10),
                "calls": calls,
            }
            m = ctx.run(config, timeout=240)
            cpu = m.cpu_per_1k()
            brain = us(cpu["brain"])
            sidecar = us(cpu["sidecar"]) if "sidecar" in cpu else None
            rows.append(
                {
                    "dispatcher": label,
                    "document": tool,
                    "calls": m.calls,
                    "errors": m.errors,
                    "calls_per_s": m.calls_per_s,
                    "brain_us_per_call": brain,
                    "sidecar_us_per_call": sidecar,
                    "total_us_per_call": brain + (sidecar or 0.0),
                    "upstream_us_per_call": us(cpu["upstream"]),
                    "other_cores": m.other_cores,
                }
            )
            ctx.log(
                f"    {label:<17} {tool:<8} brain {brain:7.1f} + sidecar "
                f"{sidecar or 0.0:7.1f} µs/call"
            )
    by = {(r["dispatcher"], r["document"]): r for r in rows}
    for row in rows:
        tuned = by[("python-tuned", row["document"])]["total_us_per_call"]
        row["vs_python_tuned"] = row["total_us_per_call"] / tuned if tuned else None
    targets = []
    why = "QUICK run: too few calls for 10 ms CPU ticks" if ctx.quick else ""
    for tool in documents:
        tandem, tuned = by[("tandem", tool)], by[("python-tuned", tool)]
        if tandem["errors"] or tuned["errors"]:
            why_doc = why or "calls failed: see the errors column"
        else:
            why_doc = why
        judged = not why_doc
        total = tandem["total_us_per_call"] / tuned["total_us_per_call"]
        sidecar = (tandem["sidecar_us_per_call"] or 0.0) / tuned["total_us_per_call"]
        targets.append(
            Target(
                name=f"total CPU per call vs python-tuned ({tool})",
                goal=f"<= {TARGET_TOTAL_VS_TUNED:g}x",
                measured=(
                    f"{total:.2f}x ({tandem['total_us_per_call']:.0f} vs "
                    f"{tuned['total_us_per_call']:.0f} µs)"
                ),
                met=total <= TARGET_TOTAL_VS_TUNED if judged else None,
                why=why_doc,
            )
        )
        targets.append(
            Target(
                name=f"sidecar CPU per call vs python-tuned's whole process ({tool})",
                goal=f"<= {TARGET_SIDECAR_VS_TUNED:g}x",
                measured=(
                    f"{sidecar:.2f}x ({tandem['sidecar_us_per_call'] or 0.0:.0f} vs "
                    f"{tuned['total_us_per_call']:.0f} µs)"
                ),
                met=sidecar <= TARGET_SIDECAR_VS_TUNED if judged else None,
                why=why_doc,
            )
        )
    return ScenarioResult(
        key="8_cpu_per_call",
        title="Scenario 8: CPU per validated ~100 KB call, two documents",
        columns=COLUMNS,
        rows=rows,
        targets=targets,
        notes=[
            f"{CONCURRENCY} calls in flight, back to back; python-naive makes "
            f"{NAIVE_CALLS} calls, the others {CALLS} (QUICK: fewer, the catalog only, "
            "no python-naive)",
            "search: ~100 KB of ASCII search results, flat schema; catalog: ~100 KB product "
            "catalog, mostly non-ASCII, many escapes, half the products \\u-escaped, a schema "
            "of $defs joined by $ref (tests/bench/fixtures/catalog_100k.json, "
            "catalog_schema.json)",
            "total = brain + sidecar (the pod's processes); upstream (nginx) apart; "
            "vs_python_tuned = total over python-tuned's total on the same document",
        ],
    )
