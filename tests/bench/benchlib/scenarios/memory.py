"""Scenario 3: memory at scale.

``AGENTS`` agents each start one ``slow_search`` call at the same moment; nginx trickles
the ~100 KB answers at 2 KB/s, so every call stays in flight. Once nginx is answering all
of them, the calls are held ``HOLD_S`` more and then cancelled. Reported: the highest
sampled RSS of brain + sidecar together, and each process's own peak (VmHWM).
"""

from __future__ import annotations

from typing import Any

from ..dispatchers import DISPATCHERS
from .base import Context, ScenarioResult, Target, mib

AGENTS = 10_000
QUICK_AGENTS = 500
HOLD_S = 2.0
TARGET_MIB = 800.0


def run(ctx: Context) -> ScenarioResult:
    agents = QUICK_AGENTS if ctx.quick else AGENTS
    rows: list[dict[str, Any]] = []
    for dispatcher in DISPATCHERS:
        config = {
            "dispatcher": dispatcher,
            "mode": "memory",
            "tool": "slow_search",
            "agents": agents,
            "hold_s": HOLD_S,
            "hold_deadline_s": 60.0 if ctx.quick else 120.0,
        }
        m = ctx.run(config, timeout=180)
        rows.append(
            {
                "dispatcher": dispatcher,
                "agents": agents,
                "in_flight": int(m.extra.get("in_flight_at_stop", 0)),
                "upstream_saw": int(m.extra.get("upstream_max_in_flight", 0)),
                "seconds_to_all_in_flight": m.extra.get("seconds_to_all_in_flight"),
                "brain_sidecar_rss_mib": mib(m.peak_rss_sum),
                "brain_peak_rss_mib": mib(m.peak_rss.get("brain", 0)),
                "sidecar_peak_rss_mib": mib(m.peak_rss["sidecar"])
                if "sidecar" in m.peak_rss
                else None,
                "failed_before_stop": m.calls,
            }
        )
        ctx.log(
            f"    {dispatcher:<13} {mib(m.peak_rss_sum):8.0f} MiB, "
            f"{rows[-1]['in_flight']} calls in flight"
        )
    tandem = rows[0]
    full = tandem["in_flight"] >= agents and tandem["upstream_saw"] >= agents
    target = Target(
        name=f"{agents:,} agents in flight: brain + sidecar RSS",
        goal=f"<= {TARGET_MIB:g} MB (10,000 agents)",
        measured=f"{tandem['brain_sidecar_rss_mib']:.0f} MiB",
        met=(tandem["brain_sidecar_rss_mib"] <= TARGET_MIB and full) if agents == AGENTS else None,
        why="" if agents == AGENTS else "QUICK run: fewer agents than the target names",
    )
    return ScenarioResult(
        key="3_memory",
        title=f"Scenario 3: memory with {agents:,} calls in flight (slow upstream)",
        columns=[
            "dispatcher",
            "agents",
            "in_flight",
            "upstream_saw",
            "seconds_to_all_in_flight",
            "brain_sidecar_rss_mib",
            "brain_peak_rss_mib",
            "sidecar_peak_rss_mib",
            "failed_before_stop",
        ],
        rows=rows,
        targets=[target],
        notes=[
            "brain_sidecar_rss_mib: highest sampled (every 50 ms) sum of brain + sidecar RSS "
            "while the calls were in flight; the Python dispatchers have no sidecar",
            "upstream_saw: requests nginx was answering at once (stub_status)",
            "failed_before_stop: calls that ended before being cancelled (should be 0)",
        ],
    )
