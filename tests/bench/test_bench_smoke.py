"""Smoke test of ``make bench``'s machinery on a tiny run (no speed is asserted).

Starts nginx and (when built) the sidecar, measures a few calls per dispatcher, and pushes
the numbers through the same writers, charts and output checks as ``make bench QUICK=1``.
Skipped when nginx is not installed (``make bench`` installs it).
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jsonschema  # type: ignore[import-untyped]
import jsonschema_rs
import orjson
from benchlib import charts, headline, report
from benchlib.documents import (
    CATALOG_FILE,
    CATALOG_SCHEMA,
    FIXTURES,
    SEARCH_SELECT,
    catalog_document,
    stale_fixtures,
)
from benchlib.nginx import Nginx
from benchlib.runner import REPO, built_sidecar
from benchlib.scenarios import Context, ScenarioResult, Target, paired
from benchlib.scenarios.capacity import TOLERANCE, Search, compare, summarize
from benchlib.scenarios.python_cost import judged
from benchlib.validate import check_result_file, check_results

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx not installed",
)


@pytest.fixture(scope="module")
def nginx() -> Iterator[Nginx]:
    with Nginx(workers=1) as server:
        yield server


def test_fixtures_match_their_generator() -> None:
    assert stale_fixtures() == []


def test_the_catalog_document_has_the_shape_it_promises() -> None:
    document, body = catalog_document()
    assert (FIXTURES / CATALOG_FILE).read_bytes() == body
    assert orjson.loads(body) == document
    jsonschema.Draft202012Validator(CATALOG_SCHEMA).validate(document)
    assert jsonschema_rs.validator_for(CATALOG_SCHEMA).is_valid(document)
    # Unicode raw and escaped (surrogate pairs), escapes, $ref: what it is there for.
    for fragment in ("春".encode(), b"\\ud83c", b'\\"', b"\\n", b"\\u0007"):
        assert fragment in body, fragment
    assert '"$ref": "#/$defs/category"' in (FIXTURES / "catalog_schema.json").read_text()


def test_the_capacity_search_brackets_to_its_tolerance() -> None:
    # A stack that holds the SLO up to 1,500 agents: the search's own logic, no speed.
    search = Search(start=8, factor=2.0, max_steps=40, bisect=True)
    while (agents := search.next_agents()) is not None:
        search.record({"agents": agents, "holds_slo": agents <= 1500, "calls_per_s": agents / 0.8})
    estimate = search.estimate()
    assert estimate is not None
    assert estimate["lo_agents"] <= 1500 < estimate["hi_agents"]
    assert estimate["resolution"] <= TOLERANCE
    assert estimate["low"] <= 1500 / 0.8 <= estimate["high"]


def test_a_ratio_is_judged_on_its_error_bars() -> None:
    ours = {"calls_per_s": 2000.0, "calls_per_s_low": 1900.0, "calls_per_s_high": 2100.0}
    close = {"calls_per_s": 1000.0, "calls_per_s_low": 950.0, "calls_per_s_high": 1050.0}
    far = {"calls_per_s": 500.0, "calls_per_s_low": 480.0, "calls_per_s_high": 520.0}
    assert compare(ours, close, 2.0, judged=True)[0] is None  # 1.81x..2.21x: cannot tell
    assert compare(ours, far, 2.0, judged=True)[0] is True
    assert compare(far, ours, 2.0, judged=True)[0] is False
    assert compare(ours, far, 2.0, judged=False)[0] is None


def test_paired_rounds_decide_only_where_the_error_bars_cannot() -> None:
    ours = {
        "dispatcher": "tandem",
        "calls_per_s": 2000.0,
        "calls_per_s_low": 1900.0,
        "calls_per_s_high": 2100.0,
    }
    close = {"calls_per_s": 1000.0, "calls_per_s_low": 950.0, "calls_per_s_high": 1050.0}
    far = {"calls_per_s": 500.0, "calls_per_s_low": 480.0, "calls_per_s_high": 520.0}

    def rounds(base_capacity: list[int], tandem_capacity: int) -> dict[str, Any]:
        # The baseline's capacity moves from round to round; a stack holds up to it.
        told = iter(base_capacity)
        capacity = {"tandem": tandem_capacity}
        steps: list[tuple[str, int]] = []

        def step(label: str, agents: int) -> dict[str, Any]:
            if (label, agents) == ("base", 1000):
                capacity["base"] = next(told)  # a round starts at the load given
            steps.append((label, agents))
            return {
                "agents": agents,
                "holds_slo": agents <= capacity[label],
                "calls_per_s": agents / 0.8,
            }

        out = paired.run(
            step, stack="tandem", baseline="base", goal=2.0, load=1000, rounds=len(base_capacity)
        )
        # Each round: the baseline up by CLIMB while it holds, then tandem at 2x its miss.
        for (label, agents), (after, theirs) in itertools.pairwise(steps):
            if after == "tandem":
                assert label == "base"
                assert theirs == 2 * agents
        return out

    # The baseline misses at 1,000 in each round (at 1,100 after one climb in the second):
    # tandem, holding up to 2,300, confirms every round.
    confirmed = rounds([900, 1050, 999], 2300)
    assert confirmed["met"] is True
    assert [r["baseline"][-1]["agents"] for r in confirmed["rounds"]] == [1000, 1100, 1000]
    assert [r["stack"]["agents"] for r in confirmed["rounds"]] == [2000, 2200, 2000]
    assert [r["calls_per_s_ratio"] for r in confirmed["rounds"]] == [2.0, 2.0, 2.0]
    # Tandem misses in one round: nothing decided.
    assert rounds([900, 1150, 999], 2100)["met"] is None
    # The baseline holds through all its climbs: that round shows nothing, tandem not run.
    held = rounds([900, 5000, 999], 2300)
    assert held["met"] is None
    assert [r["verdict"] for r in held["rounds"]] == ["confirms", "baseline held", "confirms"]
    assert held["rounds"][1]["stack"] is None
    assert len(held["rounds"][1]["baseline"]) == paired.MAX_CLIMBS + 1

    # Straddling bars: the paired rounds can confirm, and say so.
    met, measured, why = compare(ours, {**close, "paired": confirmed}, 2.0, judged=True)
    assert met is True
    assert "3 of 3 confirm" in measured
    assert "paired" in why
    assert compare(ours, {**close, "paired": held}, 2.0, judged=True)[0] is None
    # Rounds of another goal or another stack, or a QUICK run, decide nothing.
    assert compare(ours, {**close, "paired": confirmed}, 2.1, judged=True)[0] is None
    other = {**ours, "dispatcher": "tandem x2 brains"}
    assert compare(other, {**close, "paired": confirmed}, 2.0, judged=True)[0] is None
    assert compare(ours, {**close, "paired": confirmed}, 2.0, judged=False)[0] is None
    # Bars that tell are never overruled.
    assert compare(far, {**close, "paired": confirmed}, 2.0, judged=True)[0] is False


def test_malformed_paired_rounds_are_caught(tmp_path: Path) -> None:
    def step(label: str, agents: int) -> dict[str, Any]:
        return {"agents": agents, "holds_slo": label == "t", "calls_per_s": 10.0}

    good = paired.run(step, stack="t", baseline="b", goal=2.0, load=8, rounds=1)
    assert good["rounds"][0]["verdict"] == "confirms"
    bad = {**good, "rounds": [{**good["rounds"][0], "verdict": "maybe"}]}
    no_steps = {**good, "rounds": [{**good["rounds"][0], "baseline": []}]}
    for rounds, problems in ((good, 0), (bad, 1), (no_steps, 1), ({"rounds": []}, 1)):
        path = tmp_path / "1_capacity.json"
        row = {"dispatcher": "b", "paired": rounds}
        result = {"key": "1", "title": "t", "columns": ["dispatcher"], "rows": [row], "targets": []}
        path.write_text(json.dumps(result))
        assert len(check_result_file(path)) == problems, rounds


def test_the_failing_load_is_the_median_failing_end() -> None:
    def estimate(lo: int, hi: int | None) -> dict[str, int | None]:
        return {"lo_agents": lo, "hi_agents": hi}

    assert paired.failing_load([estimate(90, 100), estimate(95, 120), estimate(80, 84)]) == 100
    assert paired.failing_load([estimate(8, None)]) == 8  # QUICK: one step, it held
    assert paired.failing_load([None]) is None


def test_a_cpu_figure_is_judged_at_its_tick_resolution() -> None:
    assert judged(14.0, 15.0, 0.5) == (True, "")
    assert judged(15.0, 15.0, 0.5)[0] is None  # 14.5 to 15.5: cannot tell
    assert judged(14.6, 15.0, 0.5)[0] is None
    assert judged(15.6, 15.0, 0.5) == (False, "")


def test_the_projection_follows_its_formula() -> None:
    # One Python process: capped by the brain (1 / 100 µs); else by the cores.
    one = headline.project(16, python=1, brain_s=1e-4, sidecar_s=4e-4, efficiency=1.0)
    assert one == pytest.approx(10_000)
    four = headline.project(4, python=1, brain_s=1e-4, sidecar_s=4e-4, efficiency=0.5)
    assert four == pytest.approx(0.5 * 4 / 5e-4)


def test_python_tuned_as_one_process_per_core_splits_the_calls(nginx: Nginx) -> None:
    ctx = Context(
        quick=True,
        nginx=nginx,
        sidecar_bin=Path("/nonexistent"),
        results_dir=Path("/nonexistent"),
        repo=REPO,
        log=lambda _: None,
    )
    m = ctx.run(
        {
            "dispatcher": "python-tuned",
            "processes": 2,
            "pin": True,
            "mode": "burst",
            "tool": "catalog",
            "concurrency": 4,
            "warmup_calls": 4,
            "calls": 21,
        },
        timeout=60,
    )
    assert m.processes == 2
    assert m.statuses == {"OK": 21}, m.statuses
    assert m.latency["p99_ms"] > 0
    assert m.peak_rss["brain"] > m.ready_rss["brain"] > 0


def test_a_tiny_run_produces_well_formed_outputs(nginx: Nginx, tmp_path: Path) -> None:
    ctx = Context(
        quick=True,
        nginx=nginx,
        sidecar_bin=built_sidecar() or Path("/nonexistent"),
        results_dir=tmp_path,
        repo=REPO,
        log=lambda _: None,
    )
    dispatchers = ["python-naive", "python-tuned"] + (["tandem"] if built_sidecar() else [])
    rows = []
    for dispatcher, tool in [(d, "search") for d in dispatchers] + [(dispatchers[-1], "catalog")]:
        m = ctx.run(
            {
                "dispatcher": dispatcher,
                "mode": "burst",
                "tool": tool,
                "select": list(SEARCH_SELECT) if tool == "search" else [],
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
    top = headline.build([_capacity_result(), result], quick=True)
    assert top is not None
    top.charts = charts.draw(top, tmp_path)
    assert top.charts == ["headline.png"]
    report.write_result(top, tmp_path)
    report.write_summary(
        [top, result], {"quick": True, "machine": report.machine(), "finished_at": "now"}, tmp_path
    )
    assert check_results(tmp_path, ["0_headline", "4_python_cost"]) == []


def _capacity_result() -> ScenarioResult:
    """Scenario 1's result from searches fed made-up steps (the headline's input shape)."""
    rows = []
    for label, processes, limit in (("tandem", 1, 900), ("python-tuned x2", 2, 1200)):
        search = Search(start=8, factor=2.0, max_steps=40, bisect=True)
        while (agents := search.next_agents()) is not None:
            search.record(
                {
                    "agents": agents,
                    "holds_slo": agents <= limit,
                    "calls_per_s": agents / 0.8,
                    "p99_ms": 20.0,
                    "other_cores": 0.0,
                    "cpu_s_per_1k": {"brain": 0.2, "sidecar": 0.5, "upstream": 0.02},
                    "peak_rss_mib": {"brain": 60.0},
                }
            )
        rows.append(summarize(label, processes, [search]))
    return ScenarioResult(
        key="1_capacity",
        title="capacity",
        columns=["dispatcher"],
        rows=rows,
        detail={"cores": 2},
    )


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
