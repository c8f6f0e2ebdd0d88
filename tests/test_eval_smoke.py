"""`make eval`'s harness works: a few tasks with the router planner, through the real stack.

Checks the harness (stack start, scoring, JSON and markdown reports), not planning
quality: no success rate is asserted. The full eval is `make eval`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import sidecar_binary

RUN = Path(__file__).resolve().parent / "eval" / "run.py"

pytestmark = pytest.mark.timeout(900)


def test_the_eval_scores_a_few_router_tasks(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--planner",
            "router",
            "--only",
            "w01,c01,m01,u02",
            "--results",
            str(tmp_path),
            "--sidecar-bin",
            str(sidecar_binary()),
        ],
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    [router] = report["results"]
    assert router["planner"] == "router"
    assert router["available"] is True, router
    assert router["concurrency"] == 2  # the default for planners without batching
    outcomes = {o["id"]: o for o in router["outcomes"]}
    assert set(outcomes) == {"w01", "c01", "m01", "u02"}
    for outcome in outcomes.values():
        assert outcome["state"] in {"succeeded", "failed", "timed_out"}, outcome
        assert outcome["steps"] >= 1, outcome
        assert outcome["latency_s"] > 0, outcome
        assert outcome["success"] == (
            outcome["state"] == "succeeded" and outcome["calls_ok"] and outcome["answer_ok"]
        )
    # The two-city task proposes (at least) the two weather calls it is scored on.
    assert len(outcomes["c01"]["proposed"]) >= 1
    summary = router["summary"]
    assert summary["tasks"] == 4
    assert 0 <= summary["success_rate"] <= 1
    table = (tmp_path / "eval.md").read_text()
    assert "| router |" in table
