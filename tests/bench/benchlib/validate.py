"""Checks that a ``make bench`` run produced well-formed outputs (never a speed).

``make bench QUICK=1`` (CI) and ``test_bench_smoke.py`` call :func:`check_results`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .scenarios.paired import BASELINE_HELD, CONFIRMS, MISSED

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_result_file(path: Path) -> list[str]:
    """Problems with one scenario's JSON file (empty when it is well-formed)."""
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{path.name}: not readable JSON: {exc}"]
    problems = []
    for key, kind in (
        ("key", str),
        ("title", str),
        ("columns", list),
        ("rows", list),
        ("targets", list),
    ):
        if not isinstance(data.get(key), kind):
            problems.append(f"{path.name}: {key!r} missing or not a {kind.__name__}")
    if problems:
        return problems
    if not data["rows"]:
        problems.append(f"{path.name}: no rows")
    for i, row in enumerate(data["rows"]):
        missing = [c for c in data["columns"] if c not in row]
        if missing:
            problems.append(f"{path.name}: row {i} lacks {missing}")
        problems.extend(f"{path.name}: row {i}: {p}" for p in _paired_problems(row.get("paired")))
    for target in data["targets"]:
        if target.get("met") not in (True, False, None) or not target.get("measured"):
            problems.append(f"{path.name}: malformed target {target}")
    for chart in data.get("charts", []):
        png = path.parent / chart
        if not png.exists() or png.read_bytes()[:8] != PNG_MAGIC:
            problems.append(f"{path.name}: chart {chart} missing or not a PNG")
    return problems


def _paired_problems(paired: Any) -> list[str]:
    """Problems with a capacity row's paired rounds (scenario 1), if it has them."""
    if paired is None:
        return []
    rounds = paired.get("rounds") if isinstance(paired, dict) else None
    if not isinstance(rounds, list) or not rounds or paired.get("met") not in (True, None):
        return ["malformed paired rounds"]
    return [
        f"paired round {i} lacks a verdict or its steps"
        for i, r in enumerate(rounds)
        if r.get("verdict") not in (CONFIRMS, MISSED, BASELINE_HELD)
        or not isinstance(r.get("baseline"), list)
        or not r["baseline"]
        or (r.get("stack") is None) != (r["verdict"] == BASELINE_HELD)
    ]


def check_results(results_dir: Path, expected: list[str]) -> list[str]:
    """Problems with a run's outputs: every expected scenario's JSON, charts, the summary."""
    problems = []
    for key in expected:
        path = results_dir / f"{key}.json"
        if not path.exists():
            problems.append(f"{key}.json missing")
            continue
        problems.extend(check_result_file(path))
    summary = results_dir / "summary.json"
    if not summary.exists():
        problems.append("summary.json missing")
    else:
        data = json.loads(summary.read_text())
        if sorted(data.get("scenarios", [])) != sorted(expected):
            problems.append(f"summary.json lists {data.get('scenarios')}, expected {expected}")
    if not (results_dir / "summary.md").exists():
        problems.append("summary.md missing")
    return problems
