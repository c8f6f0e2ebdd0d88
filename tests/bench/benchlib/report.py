"""Tables on stdout, JSON and Markdown under ``results/``."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .scenarios import ScenarioResult


def machine() -> dict[str, Any]:
    """What the numbers were measured on (cores and CPU model from /proc/cpuinfo)."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    import os

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "∞"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(result: ScenarioResult) -> str:
    head = "| " + " | ".join(result.columns) + " |"
    rule = "|" + "|".join("---" for _ in result.columns) + "|"
    body = [
        "| " + " | ".join(_cell(row.get(c)) for c in result.columns) + " |" for row in result.rows
    ]
    return "\n".join([head, rule, *body])


def markdown_section(result: ScenarioResult) -> str:
    parts = [f"### {result.title}", "", markdown_table(result)]
    if result.targets:
        parts.append("")
        for t in result.targets:
            verdict = {True: "**met**", False: "**missed**", None: "not judged"}[t.met]
            why = f" ({t.why})" if t.why else ""
            parts.append(f"- {t.name}: goal {t.goal}; measured {t.measured}: {verdict}{why}")
    if result.notes:
        parts.append("")
        parts.extend(f"- {n}" for n in result.notes)
    if result.charts:
        parts.append("")
        parts.append("Charts: " + ", ".join(f"`{c}`" for c in result.charts))
    return "\n".join(parts)


def write_result(result: ScenarioResult, results_dir: Path) -> Path:
    path = results_dir / f"{result.key}.json"
    path.write_text(json.dumps(_jsonable(asdict(result)), indent=2) + "\n")
    return path


def write_summary(results: list[ScenarioResult], meta: dict[str, Any], results_dir: Path) -> None:
    summary = {
        **meta,
        "scenarios": [r.key for r in results],
        "targets": [{"scenario": r.key, **asdict(t)} for r in results for t in r.targets],
    }
    (results_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    m = meta["machine"]
    lines = [
        f"Measured {meta['finished_at']} on {m['cores']} cores ({m['cpu_model']}), "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}"
        f"{'; QUICK mode' if meta['quick'] else ''}."
        + (f" Sidecar sha256 {meta['sidecar_sha256'][:16]}." if "sidecar_sha256" in meta else ""),
        "",
    ]
    lines.extend(markdown_section(r) + "\n" for r in results)
    (results_dir / "summary.md").write_text("\n".join(lines))


def _jsonable(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null and the string "inf"."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
