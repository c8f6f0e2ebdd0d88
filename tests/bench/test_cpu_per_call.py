"""Scenario 8's rounds (medians, verdicts only where every round agrees) and the frozen copy
of the sidecar that every scenario of a ``make bench`` run measures."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run
from benchlib.scenarios.cpu_per_call import ratio_text, summarize, verdict


def sample(total: float, sidecar: float | None, errors: int = 0) -> dict[str, float | int | None]:
    return {
        "calls": 4000,
        "errors": errors,
        "calls_per_s": 1000.0,
        "brain_us_per_call": total - (sidecar or 0.0),
        "sidecar_us_per_call": sidecar,
        "total_us_per_call": total,
        "upstream_us_per_call": 20.0,
        "other_cores": 0.0,
    }


def test_a_row_is_the_median_of_its_rounds_with_calls_and_errors_summed() -> None:
    # One slow round (a moment of noise) does not move the row.
    row = summarize("tandem", "search", [sample(140, 112), sample(230, 180, 1), sample(138, 110)])
    assert row["rounds"] == 3
    assert row["calls"] == 12000
    assert row["errors"] == 1
    assert row["total_us_per_call"] == 140
    assert row["sidecar_us_per_call"] == 112
    assert row["brain_us_per_call"] == 28


def test_a_stack_without_a_sidecar_has_no_sidecar_median() -> None:
    row = summarize("python-tuned", "search", [sample(455, None), sample(460, None)])
    assert row["sidecar_us_per_call"] is None
    assert row["total_us_per_call"] == 457.5


def test_a_target_is_met_or_missed_only_when_every_round_agrees() -> None:
    assert verdict([0.24, 0.25, 0.29], 0.35, "") == (True, "")
    assert verdict([0.36, 0.38, 0.40], 0.35, "") == (False, "")
    met, why = verdict([0.25, 0.38, 0.29], 0.35, "")
    assert met is None
    assert "straddle" in why
    # At the goal counts as met, as everywhere else in the benchmark ("<= goal").
    assert verdict([0.35], 0.35, "") == (True, "")


def test_no_rounds_or_a_reason_not_to_judge_is_never_a_verdict() -> None:
    assert verdict([], 0.35, "")[0] is None
    assert verdict([0.1], 0.35, "QUICK run") == (None, "QUICK run")


def test_the_measured_text_gives_the_median_and_the_range_of_the_rounds() -> None:
    assert ratio_text([0.24, 0.30, 0.25], 112, 455) == "0.25x (112 vs 455 µs); rounds 0.24-0.30x"
    assert ratio_text([0.46], 400, 867) == "0.46x (400 vs 867 µs)"
    assert ratio_text([], 400, 0) == "- (400 vs 0 µs)"


def test_the_run_measures_a_copy_of_the_binary_that_a_rebuild_cannot_change(
    tmp_path: Path,
) -> None:
    built = tmp_path / "release" / "sidecar"
    built.parent.mkdir()
    built.write_bytes(b"\x7fELF first build")
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    copy, digest = run.frozen_copy(built, frozen)
    assert digest == hashlib.sha256(b"\x7fELF first build").hexdigest()
    # cargo relinks the file in place (scenario 5's `cargo bench` does): the copy stays.
    built.write_bytes(b"\x7fELF a bench build")
    assert copy.read_bytes() == b"\x7fELF first build"
    assert copy.name == "sidecar"
