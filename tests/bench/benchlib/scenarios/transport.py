"""Scenario 2: the transport floor, with a tiny document (``ping``, 22 bytes).

What the gRPC hop and the sidecar cost: each dispatcher one call at a time (latency) and
32 at a time (CPU per call by process), and ``ghz`` driving the sidecar's ``Invoke``
directly (no Python at all) for the sidecar's own cost per call.
"""

from __future__ import annotations

import base64
from typing import Any

from ..dispatchers import DISPATCHERS
from ..ghz import ghz_binary, run_ghz
from ..procstat import tree_cpu_seconds
from ..runner import sidecar_for
from .base import Context, ScenarioResult, us

CONCURRENCY = 32


def run(ctx: Context) -> ScenarioResult:
    serial_calls, parallel_calls = (200, 1000) if ctx.quick else (1500, 10_000)
    rows: list[dict[str, Any]] = []
    for dispatcher in DISPATCHERS:
        for concurrency, calls in ((1, serial_calls), (CONCURRENCY, parallel_calls)):
            config = {
                "dispatcher": dispatcher,
                "mode": "burst",
                "tool": "ping",
                "concurrency": concurrency,
                "warmup_calls": max(50, calls // 10),
                "calls": calls,
            }
            m = ctx.run(config, timeout=120)
            cpu = m.cpu_per_1k()
            rows.append(
                {
                    "client": dispatcher,
                    "concurrency": concurrency,
                    "calls": m.calls,
                    "errors": m.errors,
                    "calls_per_s": m.calls_per_s,
                    "p50_ms": m.latency["p50_ms"],
                    "p99_ms": m.latency["p99_ms"],
                    "brain_us_per_call": us(cpu["brain"]),
                    "sidecar_us_per_call": us(cpu["sidecar"]) if "sidecar" in cpu else None,
                    "upstream_us_per_call": us(cpu["upstream"]),
                    "other_cores": m.other_cores,
                }
            )
            ctx.log(f"    {dispatcher:<13} c={concurrency:<3} {m.calls_per_s:8.0f} calls/s")
    notes = [
        "tiny JSON from nginx; each dispatcher validates arguments and response as in scenario 1",
        "`brain` is the calling process: the Python agent process, or ghz itself",
    ]
    binary = ghz_binary()
    if binary is None:
        notes.append("ghz not installed: its rows are missing (make bench installs it)")
    else:
        for concurrency, calls in ((1, serial_calls), (CONCURRENCY, parallel_calls)):
            rows.append(_ghz_row(ctx, binary, concurrency, calls))
    return ScenarioResult(
        key="2_transport",
        title="Scenario 2: transport floor (tiny document)",
        columns=[
            "client",
            "concurrency",
            "calls",
            "errors",
            "calls_per_s",
            "p50_ms",
            "p99_ms",
            "brain_us_per_call",
            "sidecar_us_per_call",
            "upstream_us_per_call",
            "other_cores",
        ],
        rows=rows,
        notes=notes,
    )


def _ghz_row(ctx: Context, binary: str, concurrency: int, calls: int) -> dict[str, Any]:
    with sidecar_for(ctx.nginx, ctx.sidecar_bin) as sidecar:
        assert sidecar.proc is not None
        pids = {"sidecar": sidecar.proc.pid, "upstream": ctx.nginx.pid}
        before = {role: tree_cpu_seconds([pid]) for role, pid in pids.items()}
        result = run_ghz(
            binary,
            proto=ctx.repo / "proto/dispatch/v1/dispatch.proto",
            target=sidecar.tcp_target,
            token=sidecar.auth_token,
            tool="ping",
            arguments_b64=base64.b64encode(b'{"n":1}').decode(),
            calls=calls,
            concurrency=concurrency,
            timeout_s=120,
        )
        after = {role: tree_cpu_seconds([pid]) for role, pid in pids.items()}
    n = max(1, result.calls)
    ctx.log(f"    ghz→Invoke    c={concurrency:<3} {result.calls_per_s:8.0f} calls/s")
    return {
        "client": "ghz → sidecar Invoke",
        "concurrency": concurrency,
        "calls": result.calls,
        "errors": result.calls - result.ok,
        "calls_per_s": result.calls_per_s,
        "p50_ms": result.percentile_ms(50),
        "p99_ms": result.percentile_ms(99),
        "brain_us_per_call": result.cpu_s / n * 1e6,
        "sidecar_us_per_call": (after["sidecar"] - before["sidecar"]) / n * 1e6,
        "upstream_us_per_call": (after["upstream"] - before["upstream"]) / n * 1e6,
        "other_cores": None,
    }
