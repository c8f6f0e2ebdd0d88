"""Smoke test of ``make bench``'s machinery on a tiny run (no speed is asserted).

Starts nginx and (when built) the sidecar, measures a few calls per dispatcher, and pushes
the numbers through the same writers, charts and output checks as ``make bench QUICK=1``.
Skipped when nginx is not installed (``make bench`` installs it).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import charts, report
from benchlib.documents import SEARCH_SELECT, stale_fixtures
from benchlib.nginx import Nginx
from benchlib.runner import REPO
from benchlib.scenarios import Context, ScenarioResult, Target
from benchlib.validate import check_results

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx not installed",
)


def _sidecar_bin() -> Path | None:
    for profile in ("release", "debug"):
        path = REPO / f"sidecar-rs/target/{profile}/sidecar"
        if path.exists():
            return path
    return None


@pytest.fixture(scope="module")
def nginx() -> Iterator[Nginx]:
    with Nginx(workers=1) as server:
        yield server


def test_fixtures_match_their_generator() -> None:
    assert stale_fixtures() == []


def test_a_tiny_run_produces_well_formed_outputs(nginx: Nginx, tmp_path: Path) -> None:
    ctx = Context(
        quick=True,
        nginx=nginx,
        sidecar_bin=_sidecar_bin() or Path("/nonexistent"),
        results_dir=tmp_path,
        repo=REPO,
        log=lambda _: None,
    )
    dispatchers = ["python-naive", "python-tuned"] + (["tandem"] if _sidecar_bin() else [])
    rows = []
    for dispatcher in dispatchers:
        m = ctx.run(
            {
                "dispatcher": dispatcher,
                "mode": "burst",
                "tool": "search",
                "select": list(SEARCH_SELECT),
                "concurrency": 4,
                "warmup_calls": 4,
                "calls": 20,
            },
            timeout=60,
        )
        assert m.statuses == {"OK": 20}, m.statuses
        assert m.peak_rss["brain"] > 0
        rows.append(
            {
                "case": dispatcher,
                "calls": m.calls,
                "p99_ms": m.latency["p99_ms"],
                "brain_us_per_call": m.cpu_per_1k()["brain"] * 1000,
            }
        )
    result = ScenarioResult(
        key="4_python_cost",
        title="smoke",
        columns=["case", "calls", "p99_ms", "brain_us_per_call"],
        rows=rows,
        targets=[Target(name="t", goal="g", measured="m", met=None)],
    )
    result.charts = charts.draw(result, tmp_path)
    report.write_result(result, tmp_path)
    report.write_summary(
        [result], {"quick": True, "machine": report.machine(), "finished_at": "now"}, tmp_path
    )
    assert check_results(tmp_path, ["4_python_cost"]) == []


def test_the_output_check_catches_malformed_results(tmp_path: Path) -> None:
    (tmp_path / "1_capacity.json").write_text(
        json.dumps(
            {
                "key": "1_capacity",
                "title": "t",
                "columns": ["a"],
                "rows": [{"b": 1}],
                "targets": [],
                "charts": ["1_capacity.png"],
            }
        )
    )
    (tmp_path / "1_capacity.png").write_bytes(b"not a png")
    problems = check_results(tmp_path, ["1_capacity", "2_transport"])
    assert any("lacks ['a']" in p for p in problems)
    assert any("not a PNG" in p for p in problems)
    assert "2_transport.json missing" in problems
    assert "summary.json missing" in problems
