"""Scenario 3: memory at scale.

``AGENTS`` agents each start one ``slow_search`` call at the same moment; nginx sends each
answer's first 4 KB at once and then a byte a second, so every call stays in flight
holding the same bytes, whichever stack and however long its calls took to start. Every
dispatcher calls nginx over HTTP/1.1, a connection per call in flight; the sidecar runs
once more against nginx's HTTP/2 listener (``upstreams.<origin>.http: http2``), every call
a stream on one connection: what it holds for an origin that speaks HTTP/2 (aiohttp does
not).

Once nginx is answering all of them, the calls are held ``HOLD_S`` more and then
cancelled. Reported: the highest sampled RSS of brain + sidecar together, each process's
own peak (VmHWM), and bytes per in-flight call for each process: its peak over the calls
in flight, and the marginal cost (peak minus its RSS when ready, before any call, over
the calls in flight).
"""

from __future__ import annotations

from typing import Any

from ..dispatchers import stacks
from ..runner import Measurement, cores
from .base import Context, ScenarioResult, Target, mib

AGENTS = 10_000
QUICK_AGENTS = 500
HOLD_S = 2.0
#: Budgets of a run's phases, in seconds (full run, QUICK run): the agent process starting,
#: the calls getting in flight (past it the run stops with what is in flight), and
#: cancelling them all. The run's timeout is their sum. python-naive is the slow one: on
#: the 2-core development machine its 10,000 calls took 205 s to get in flight and 20 s
#: to cancel (2026-12-02); the others take seconds.
START_S = 60.0
FILL_S = (300.0, 60.0)
CANCEL_S = (120.0, 60.0)
TARGET_MIB = 800.0
#: Issue 11: the sidecar's peak RSS <= this times python-tuned's, same calls in flight.
TARGET_SIDECAR_VS_TUNED = 0.5
#: The sidecar's row against nginx's HTTP/2 listener.
H2_LABEL = "tandem, HTTP/2 upstream"


def _stacks(pin: bool) -> dict[str, dict[str, Any]]:
    """What runs, by label: every stack on ``slow_search``, and after tandem, tandem on
    ``slow_search_h2``."""
    out: dict[str, dict[str, Any]] = {}
    for label, stack in stacks(len(cores()), pin=pin).items():
        out[label] = {**stack, "tool": "slow_search"}
        if label == "tandem":
            out[H2_LABEL] = {**stack, "tool": "slow_search_h2"}
    return out


def _per_call(m: Measurement, role: str, in_flight: int) -> tuple[float | None, float | None]:
    """(peak bytes, marginal bytes) per in-flight call of ``role``; None without it."""
    if role not in m.peak_rss or in_flight <= 0:
        return None, None
    peak = m.peak_rss[role]
    return peak / in_flight, (peak - m.ready_rss.get(role, 0)) / in_flight


def run(ctx: Context) -> ScenarioResult:
    agents = QUICK_AGENTS if ctx.quick else AGENTS
    fill_s, cancel_s = FILL_S[ctx.quick], CANCEL_S[ctx.quick]  # [False] is the full run
    rows: list[dict[str, Any]] = []
    for label, stack in _stacks(ctx.pin).items():
        config = {
            **stack,
            "mode": "memory",
            "agents": agents,
            "hold_s": HOLD_S,
            "hold_deadline_s": fill_s,
            "cancel_deadline_s": cancel_s,
        }
        m = ctx.run(config, timeout=START_S + fill_s + HOLD_S + cancel_s)
        in_flight = int(m.extra.get("in_flight_at_stop", 0))
        brain_peak, brain_marginal = _per_call(m, "brain", in_flight)
        sidecar_peak, sidecar_marginal = _per_call(m, "sidecar", in_flight)
        rows.append(
            {
                "dispatcher": label,
                "agents": agents,
                "in_flight": in_flight,
                "upstream_saw": int(m.extra.get("upstream_max_in_flight", 0)),
                "seconds_to_all_in_flight": m.extra.get("seconds_to_all_in_flight"),
                "seconds_to_cancel": m.extra.get("seconds_to_cancel"),
                "brain_sidecar_rss_mib": mib(m.peak_rss_sum),
                "brain_peak_rss_mib": mib(m.peak_rss.get("brain", 0)),
                "sidecar_peak_rss_mib": mib(m.peak_rss["sidecar"])
                if "sidecar" in m.peak_rss
                else None,
                "bytes_per_call": (m.peak_rss_sum / in_flight) if in_flight else None,
                "brain_bytes_per_call": brain_peak,
                "brain_marginal_bytes_per_call": brain_marginal,
                "sidecar_bytes_per_call": sidecar_peak,
                "sidecar_marginal_bytes_per_call": sidecar_marginal,
                "failed_before_stop": m.calls,
            }
        )
        ctx.log(
            f"    {label:<17} {mib(m.peak_rss_sum):8.0f} MiB, "
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
    tuned = next(r for r in rows if r["dispatcher"] == "python-tuned")
    h2 = next(r for r in rows if r["dispatcher"] == H2_LABEL)
    sidecar_targets = [
        _sidecar_target(row, tuned, agents, name)
        for row, name in (
            (tandem, "sidecar peak RSS vs python-tuned's, same calls in flight, both on HTTP/1.1"),
            (h2, "the same, the sidecar on nginx's HTTP/2 listener (python-tuned on HTTP/1.1)"),
        )
    ]
    return ScenarioResult(
        key="3_memory",
        title=f"Scenario 3: memory with {agents:,} calls in flight (slow upstream)",
        columns=[
            "dispatcher",
            "agents",
            "in_flight",
            "upstream_saw",
            "seconds_to_all_in_flight",
            "seconds_to_cancel",
            "brain_sidecar_rss_mib",
            "brain_peak_rss_mib",
            "sidecar_peak_rss_mib",
            "bytes_per_call",
            "brain_bytes_per_call",
            "brain_marginal_bytes_per_call",
            "sidecar_bytes_per_call",
            "sidecar_marginal_bytes_per_call",
            "failed_before_stop",
        ],
        rows=rows,
        targets=[target, *sidecar_targets],
        notes=[
            "brain_sidecar_rss_mib: highest sampled (every 50 ms) sum of brain + sidecar RSS "
            "while the calls were in flight; the Python dispatchers have no sidecar",
            "upstream_saw: requests nginx was answering at once (stub_status)",
            "seconds_to_cancel: from the stop to the last call cancelled in the agent process",
            "failed_before_stop: calls that ended before being cancelled (should be 0)",
            "bytes_per_call: brain_sidecar_rss over the calls in flight; <role>_bytes_per_call: "
            "that process's peak RSS (VmHWM) over the calls in flight; "
            "<role>_marginal_bytes_per_call: the same less its RSS when ready (idle)",
            "python-tuned xN: N processes, one per core (pinned), the calls split between "
            "them; its brain columns are the sums over the processes",
            f"{H2_LABEL}: the sidecar with the same calls on nginx's HTTP/2 listener "
            "(h2c, `http: http2`): one connection, a stream per call; the other rows hold "
            "a connection per call",
        ],
    )


def _sidecar_target(row: dict[str, Any], tuned: dict[str, Any], agents: int, name: str) -> Target:
    """Issue 11's memory goal for one sidecar row: its peak RSS over python-tuned's."""
    sidecar, python = row["sidecar_peak_rss_mib"], tuned["brain_peak_rss_mib"]
    ratio = sidecar / python if sidecar is not None and python else None
    full = row["in_flight"] >= agents and row["upstream_saw"] >= agents
    return Target(
        name=name,
        goal=f"<= {TARGET_SIDECAR_VS_TUNED:g}x",
        measured=(
            f"{ratio:.2f}x ({sidecar:.0f} vs {python:.0f} MiB)"
            if ratio is not None
            else "no sidecar row"
        ),
        met=(ratio <= TARGET_SIDECAR_VS_TUNED and full)
        if agents == AGENTS and ratio is not None
        else None,
        why="" if agents == AGENTS else "QUICK run: fewer agents than the target names",
    )
