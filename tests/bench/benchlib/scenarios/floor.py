"""Scenario 5: the physical floor.

The criterion benchmark ``sidecar-rs/benches/parse_validate.rs`` parses and validates the
same ~100 KB documents against the same schemas with the sidecar's own code, on both of
its roads (``*_100k``: the exact serde_json path; ``*_100k_fast``: the sonic-rs tree path;
``*_100k_streaming``: the streaming path a valid response takes first, validated while read),
and parses them by every technique in reach (``parse_technique/*``: serde_json ``Value``,
serde_json ``IgnoredAny`` (a pure scan), a simd-json tape, a sonic-rs tree), all under the
sidecar's allocator. The sidecar's measured CPU per ``search`` call (end to end: gRPC,
HTTP, parse, validate, result) is reported as a multiple of the fastest of those and of
the streaming path (which does parse and validate both), so the multiple is an upper bound
on waste.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from .base import Context, ScenarioResult, Target, us

TARGET_MULTIPLE = 1.5
BENCHES = (
    "search_100k",
    "search_100k_fast",
    "search_100k_streaming",
    "parse",
    "validate",
    "depth_scan",
)
TECHNIQUES = ("serde_json_value", "serde_json_ignored_any", "simd_json_tape", "sonic_rs_value")


def criterion_estimates(ctx: Context) -> dict[str, float]:
    """Run the criterion benchmark; median nanoseconds per iteration, by function."""
    args = [
        "cargo",
        "bench",
        "--locked",
        "--manifest-path",
        str(ctx.repo / "sidecar-rs/Cargo.toml"),
        "--bench",
        "parse_validate",
        "--",
        "--noplot",
    ]
    if ctx.quick:
        args += ["--warm-up-time", "0.3", "--measurement-time", "0.6"]
    done = subprocess.run(args, timeout=900, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cargo bench failed ({done.returncode}):\n{done.stderr[-3000:]}")
    root = ctx.repo / "sidecar-rs/target/criterion"
    names = [f"parse_validate/{name}" for name in BENCHES] + [
        "parse_validate/catalog_100k",
        "parse_validate/catalog_100k_fast",
        "parse_validate/catalog_100k_streaming",
    ]
    names += [f"parse_technique/{doc}_{t}" for doc in ("search", "catalog") for t in TECHNIQUES]
    return {name: _median_ns(root / name / "new/estimates.json") for name in names}


def _floor_of(bench: str, estimates: dict[str, float]) -> float:
    """The fastest technique on the same document, the streaming path included (ns)."""
    doc = "catalog" if "catalog" in bench else "search"
    techniques = [estimates[f"parse_technique/{doc}_{t}"] for t in TECHNIQUES]
    return min([*techniques, estimates[f"parse_validate/{doc}_100k_streaming"]])


def _median_ns(path: Path) -> float:
    return float(json.loads(path.read_text())["median"]["point_estimate"])


def run(ctx: Context) -> ScenarioResult:
    estimates = criterion_estimates(ctx)
    floor_us = _floor_of("search", estimates) / 1000
    calls = 500 if ctx.quick else 5000
    rows: list[dict[str, Any]] = [
        {
            "what": f"criterion: {name}",
            "us_per_call": ns / 1000,
            # Each document's rows against that document's floor.
            "multiple_of_floor": ns / _floor_of(name, estimates),
            "other_cores": None,
        }
        for name, ns in estimates.items()
    ]
    sidecar_us: dict[int, float] = {}
    for concurrency in (1, 64):
        config = {
            "dispatcher": "tandem",
            "mode": "burst",
            "tool": "search",
            "concurrency": concurrency,
            "warmup_calls": max(50, calls // 10),
            "calls": calls,
        }
        m = ctx.run(config, timeout=180)
        sidecar_us[concurrency] = us(m.cpu_per_1k()["sidecar"])
        rows.append(
            {
                "what": f"sidecar end to end, {concurrency} in flight",
                "us_per_call": sidecar_us[concurrency],
                "multiple_of_floor": sidecar_us[concurrency] / floor_us,
                "other_cores": m.other_cores,
            }
        )
        ctx.log(
            f"    sidecar c={concurrency:<3} {sidecar_us[concurrency]:7.1f} µs/call "
            f"(floor {floor_us:.1f})"
        )
    # The second document (issue 11): the sidecar's end-to-end CPU per call on it, beside
    # the floor rows the criterion benchmark has for it (when it has them).
    config = {
        "dispatcher": "tandem",
        "mode": "burst",
        "tool": "catalog",
        "concurrency": 64,
        "warmup_calls": max(50, calls // 10),
        "calls": calls,
    }
    m = ctx.run(config, timeout=180)
    catalog_us = us(m.cpu_per_1k()["sidecar"])
    catalog_floor = _floor_of("catalog", estimates)
    rows.append(
        {
            "what": "sidecar end to end, catalog document, 64 in flight",
            "us_per_call": catalog_us,
            "multiple_of_floor": catalog_us / (catalog_floor / 1000) if catalog_floor else None,
            "other_cores": m.other_cores,
        }
    )
    ctx.log(f"    sidecar catalog {catalog_us:7.1f} µs/call")
    best = min(sidecar_us.values())
    return ScenarioResult(
        key="5_floor",
        title="Scenario 5: the sidecar's CPU per 100 KB call vs the parse + validate floor",
        columns=["what", "us_per_call", "multiple_of_floor", "other_cores"],
        rows=rows,
        targets=[
            Target(
                name="sidecar CPU per 100 KB call",
                goal=f"<= {TARGET_MULTIPLE:g}x the parse + validate floor",
                measured=f"{best / floor_us:.2f}x ({best:.0f} µs vs {floor_us:.0f} µs)",
                met=None if ctx.quick else best / floor_us <= TARGET_MULTIPLE,
                why="QUICK run: too few calls for 10 ms CPU ticks" if ctx.quick else "",
            )
        ],
        notes=[
            "floor = the fastest of the criterion `parse_technique/search_*` rows (parse only, "
            "no validation) and `search_100k_streaming` (parse and validate in one pass), "
            "single thread, warm cache, mimalloc",
            "sidecar = the process's CPU (/proc, all threads) per call while the brain drives "
            "`search` calls through it",
        ],
        detail={"criterion_ns": estimates},
    )
