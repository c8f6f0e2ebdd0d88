"""``scale_out.py`` (scenario 1 at pinned core counts): how it splits the CPUs, names the
stacks on each core count, projects from the first count, and a real one-step run."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_out
from benchlib.headline import efficiency, project
from benchlib.runner import REPO
from benchlib.scenarios.capacity import Plan, brains_label, resolve

#: A capacity row as scenario 1 writes it (CPU in seconds per 1,000 calls).
TANDEM = {
    "dispatcher": "tandem",
    "processes": 1,
    "calls_per_s": 4836.0,
    "brain_cpu_s_per_1k": 0.0742,
    "sidecar_cpu_s_per_1k": 0.271,
    "upstream_cpu_s_per_1k": 0.0267,
    "max_agents": 3791,
}
TUNED_X2 = {
    "dispatcher": "python-tuned x2",
    "processes": 2,
    "calls_per_s": 2178.0,
    "brain_cpu_s_per_1k": 0.940,
    "sidecar_cpu_s_per_1k": None,
    "upstream_cpu_s_per_1k": 0.0353,
    "max_agents": 1775,
}
BASE = {"tandem": TANDEM, "python-tuned xN": TUNED_X2}


def test_the_stacks_take_the_first_cpus_and_nginx_its_own() -> None:
    cpus = list(range(16))
    assert scale_out.plan_cpus(cpus, [2, 8, 4], None) == (list(range(12)), [12, 13, 14, 15])
    assert scale_out.plan_cpus(cpus, [8], [0, 1]) == (list(range(2, 16)), [0, 1])
    assert scale_out.plan_cpus([0, 1], [2], None, shared=True) == ([0, 1], None)
    with pytest.raises(ValueError, match="do not fit"):
        scale_out.plan_cpus(cpus, [14], None)
    with pytest.raises(ValueError, match="not in this process's affinity"):
        scale_out.plan_cpus([0, 1, 2, 3], [2], [7])
    assert scale_out.cpu_list("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]


def test_stack_names_resolve_per_core_count() -> None:
    assert resolve("python-tuned xN", 8) == "python-tuned x8"
    assert resolve("tandem xB", 4) is None  # one brain: plain tandem
    assert resolve("tandem xB", 8) == brains_label(2) == "tandem x2 brains"
    plan = Plan(stacks=["tandem", "python-tuned xN", "tandem xB"], estimates={"tandem xB": 9})
    labels: dict[str, dict[str, Any]] = {
        "tandem": {"dispatcher": "tandem"},
        "python-tuned x8": {"processes": 8},
    }
    chosen = plan.chosen(labels, 8)
    assert list(chosen) == ["tandem", "python-tuned x8", "tandem x2 brains"]
    assert chosen["tandem x2 brains"] == {"dispatcher": "tandem", "processes": 2}
    labels4: dict[str, dict[str, Any]] = {
        "tandem": {"dispatcher": "tandem"},
        "python-tuned x4": {"processes": 4},
    }
    assert list(plan.chosen(labels4, 4)) == ["tandem", "python-tuned x4"]
    assert plan.first_estimates(8) == {"tandem x2 brains": 9}
    assert plan.first_estimates(4) == {}
    with pytest.raises(ValueError, match="name it"):
        Plan(stacks=["python-tuned xN"]).chosen(labels, 8)
    with pytest.raises(ValueError, match="no stack 'nonsense'"):
        Plan(stacks=["tandem", "nonsense"]).chosen(labels, 8)


def test_projections_grow_python_tuned_a_process_per_core_and_tandem_a_brain_per_four() -> None:
    def expected(row: dict[str, object], cores: int, python: int) -> float:
        measured = int(row["processes"])  # type: ignore[call-overload]
        share = efficiency(row, 2, measured, upstream_shared=False)
        return project(
            cores,
            python=python,
            brain_s=float(row["brain_cpu_s_per_1k"]) / 1000,  # type: ignore[arg-type]
            sidecar_s=float(row["sidecar_cpu_s_per_1k"] or 0.0) / 1000,  # type: ignore[arg-type]
            efficiency=share,
        )

    for cores in (4, 8, 16):
        got = {s: scale_out._projected(s, BASE, 2, cores, False) for s in scale_out.STACKS}
        assert got["tandem"] == pytest.approx(expected(TANDEM, cores, 1))
        assert got["python-tuned xN"] == pytest.approx(expected(TUNED_X2, cores, cores))
        # From plain tandem's row, with a brain per four cores.
        assert got["tandem xB"] == pytest.approx(expected(TANDEM, cores, cores // 4))
    # At the measured count the projection is the measurement.
    assert scale_out._projected("tandem", BASE, 2, 2, False) == pytest.approx(4836.0)
    assert math.isnan(scale_out._projected("python-tuned xN", {}, 2, 8, False))
    starts = scale_out.next_estimates(BASE, 2, 8, list(scale_out.STACKS))
    rate = scale_out._projected("tandem", BASE, 2, 8, False)
    assert starts["tandem"] == round(3791 * rate / 4836.0)
    assert set(starts) == set(scale_out.STACKS)


def test_estimates_are_label_equals_agents() -> None:
    assert scale_out.parse_estimates(["tandem=10", "python-tuned xN=7"]) == {
        "tandem": 10,
        "python-tuned xN": 7,
    }
    for bad in ("tandem", "tandem=x", "=5"):
        with pytest.raises(ValueError, match="LABEL=AGENTS"):
            scale_out.parse_estimates([bad])


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx not installed",
)
def test_a_one_step_run_writes_its_tables_and_gives_the_cpus_back(tmp_path: Path) -> None:
    debug = REPO / "sidecar-rs/target/debug/sidecar"
    sidecar = Path(os.environ.get("SIDECAR_BIN", debug))
    if not sidecar.exists():
        pytest.skip(f"no sidecar at {sidecar}")
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("python-tuned xN needs 2 CPUs")
    cores = 2
    argv = ["--quick", "--cores", str(cores), "--shared-upstream", "--results", str(tmp_path)]
    argv += ["--sidecar-bin", str(sidecar), "--estimate", "tandem=24"]
    argv += ["--estimate", "python-tuned xN=24"]
    assert scale_out.main(argv) == 0
    assert os.sched_getaffinity(0) == before
    table = json.loads((tmp_path / "9_scale_out.json").read_text())
    rows = {r["dispatcher"]: r for r in table["rows"]}
    assert set(rows) == {"tandem", f"python-tuned x{cores}"}
    assert all(r["cores"] == cores and r["calls_per_s"] > 0 for r in rows.values())
    assert [t["name"] for t in table["targets"]] == [
        f"tandem vs python-tuned x{cores}, {cores} cores"
    ]
    assert (tmp_path / f"1_capacity_{cores}c.json").is_file()
    assert "| cores |" in (tmp_path / "9_scale_out.md").read_text()
