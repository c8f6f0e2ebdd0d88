"""Scenario 7 (issue 6): the hot path with a fleet-wide limit versus a pod limit.

The same tiny tool behind the same sidecar binary, once with a ``scope: pod`` limit and
once with a ``scope: fleet`` limit in a real redis-server. The limits are generous, so no
call is refused and only the cost of checking is measured:
- the sidecar's CPU per call;
- client-side p50/p99;
- Redis commands per 1,000 calls, read from the sidecar's own
  ``sidecar_fleet_redis_commands_total``. Leases are counted apart from the one-per-second
  heartbeat.

The claim under test is that a fleet limit adds no Redis round trip to the typical call:
leases per 1,000 calls stay far below 1,000.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from brain import ClientOptions, SidecarClient, Status

from .. import procstat
from ..runner import SidecarProcess
from ..stats import summarize_ms
from ..tools import PING, ToolSpec, arguments_for, sidecar_config
from .base import Context, ScenarioResult, Target, us

CONCURRENCY = 64


def _limited(scope: str) -> ToolSpec:
    limit = {"scope": scope, "rate": 1_000_000, "per": "1s", "burst": 100_000}
    return ToolSpec(
        PING.name,
        PING.path,
        PING.input_schema,
        PING.output_schema,
        PING.query,
        sidecar_extra={"rate_limits": [limit]},
    )


async def _drive(target: str, calls: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    queue = iter(range(calls))
    async with SidecarClient(target, options=ClientOptions(default_timeout=10)) as client:
        await client.wait_connected(15)

        async def worker() -> None:
            nonlocal errors
            for i in queue:
                started = time.perf_counter()
                result = await client.call(PING.name, arguments_for(PING.name, i), agent_id="a")
                latencies.append(time.perf_counter() - started)
                if result.status is not Status.OK:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies, errors


def _one(ctx: Context, scope: str, redis_url: str | None, calls: int) -> dict[str, Any]:
    from harness import scrape  # tests/ is on sys.path once benchlib.runner is imported

    extra = ["--redis-url", redis_url] if redis_url else []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-fleet-") as tmp:
        sidecar = SidecarProcess(
            Path(tmp),
            sidecar_config(ctx.nginx.base_url, [_limited(scope)]),
            *extra,
            env={"RUST_LOG": os.environ.get("RUST_LOG", "warn,sidecar=info")},
            binary=ctx.sidecar_bin,
        )
        sidecar.start(timeout=30)
        try:
            assert sidecar.proc is not None
            asyncio.run(_drive(sidecar.unix_target, calls // 10))  # warm-up
            before = scrape(sidecar.metrics_port)
            cpu_before = procstat.cpu_seconds(sidecar.proc.pid)
            latencies, errors = asyncio.run(_drive(sidecar.unix_target, calls))
            cpu = procstat.cpu_seconds(sidecar.proc.pid) - cpu_before
            after = scrape(sidecar.metrics_port)
        finally:
            sidecar.terminate(timeout=15)

    def redis_ops(op: str) -> float:
        key = (("op", op),)
        family = "sidecar_fleet_redis_commands_total"
        return after.get(family, {}).get(key, 0.0) - before.get(family, {}).get(key, 0.0)

    summary = summarize_ms(latencies)
    return {
        "limit": f"scope: {scope}",
        "calls": calls,
        "errors": errors,
        "sidecar_us_per_call": us(cpu / calls * 1000),
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "redis_leases_per_1k_calls": redis_ops("lease") / calls * 1000,
        "redis_heartbeats": redis_ops("heartbeat"),
    }


def run(ctx: Context) -> ScenarioResult:
    from harness import RedisServer

    calls = 5_000 if ctx.quick else 50_000
    rows = [_one(ctx, "pod", None, calls)]
    with tempfile.TemporaryDirectory(prefix="tandem-bench-redis-") as tmp:
        redis = RedisServer(Path(tmp)).start()
        try:
            rows.append(_one(ctx, "fleet", redis.url, calls))
        finally:
            redis.kill()
    pod, fleet = rows
    for row in rows:
        ctx.log(
            f"    {row['limit']:<13} sidecar {row['sidecar_us_per_call']:6.1f} µs/call, "
            f"p99 {row['p99_ms']:.2f} ms, leases/1k {row['redis_leases_per_1k_calls']:.1f}"
        )
    leases = fleet["redis_leases_per_1k_calls"]
    return ScenarioResult(
        key="7_fleet_limit",
        title="Scenario 7: the hot path with a fleet-wide limit versus a pod limit",
        columns=[
            "limit",
            "calls",
            "errors",
            "sidecar_us_per_call",
            "p50_ms",
            "p99_ms",
            "redis_leases_per_1k_calls",
            "redis_heartbeats",
        ],
        rows=rows,
        targets=[
            Target(
                name="fleet limit: no Redis round trip on the typical call",
                goal="Redis leases per 1,000 calls well under 1,000 (< 50)",
                measured=f"{leases:.1f} per 1,000 calls",
                met=leases < 50,
                why="" if leases < 50 else "leases are too small for this call rate",
            )
        ],
        notes=[
            "Limits are set high enough that nothing is refused: this measures the cost of "
            "checking them.",
            f"Sidecar CPU per call, fleet vs pod: {fleet['sidecar_us_per_call']:.1f} vs "
            f"{pod['sidecar_us_per_call']:.1f} µs.",
        ],
    )
