"""``make bench``: tandem versus pure-Python dispatchers, side by side, on this machine.

    .venv/bin/python tests/bench/run.py [--quick] [--only 1_capacity ...]

Starts nginx (the upstream), then runs each scenario (:mod:`benchlib.scenarios`); every
scenario prints its table and writes ``results/<key>.json`` and PNG charts; the run ends
with the headline (``results/0_headline.json`` and ``headline.png``: capacity under the
SLO per stack with error bars, CPU and memory per call, a projection to more cores; it
needs scenario 1, and takes scenarios 3 and 8 when they ran), ``results/summary.json`` and
``results/summary.md``, and checks that all of it is well formed. ``--quick`` is the CI
smoke mode: small and short, and never judged on speed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import charts, headline, report
from benchlib.documents import stale_fixtures
from benchlib.nginx import Nginx
from benchlib.runner import REPO, open_files_to_the_limit
from benchlib.scenarios import SCENARIOS, Context, ScenarioResult
from benchlib.validate import check_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke mode (under 3 minutes)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--sidecar-bin", type=Path, default=REPO / "sidecar-rs/target/release/sidecar"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="run python-tuned xN's processes unpinned (default: one per core, taskset -c)",
    )
    return parser.parse_args(argv)


def frozen_copy(binary: Path, into: Path) -> tuple[Path, str]:
    """A copy of ``binary`` for the whole run, and its sha256.

    Every scenario measures these same bytes: scenario 5's ``cargo bench`` relinks
    ``target/release/sidecar`` (a bench build unifies the dev-dependencies' features, e.g.
    tokio's ``test-util``), and a rebuild during the run would otherwise change the
    sidecar under the scenarios after it.
    """
    copy = into / binary.name
    shutil.copy2(binary, copy)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    return copy, digest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stale = stale_fixtures()
    if stale:
        print(f"fixtures out of date: {stale}; run `python -m benchlib.documents` in tests/bench")
        return 2
    if not args.sidecar_bin.exists():
        print(f"no sidecar at {args.sidecar_bin}: build it with `make sidecar-release`")
        return 2
    open_files_to_the_limit()
    args.results.mkdir(parents=True, exist_ok=True)
    keys = args.only or list(SCENARIOS)
    started = time.monotonic()
    results: list[ScenarioResult] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-bin-") as tmp, Nginx() as nginx:
        sidecar_bin, sidecar_sha256 = frozen_copy(args.sidecar_bin, Path(tmp))
        print(f"==> measuring {args.sidecar_bin} (sha256 {sidecar_sha256[:16]}...)", flush=True)
        ctx = Context(
            quick=args.quick,
            nginx=nginx,
            sidecar_bin=sidecar_bin,
            results_dir=args.results,
            repo=REPO,
            pin=not args.no_pin,
        )
        for key in keys:
            print(f"==> {key}{' (quick)' if args.quick else ''}", flush=True)
            t0 = time.monotonic()
            try:
                result = SCENARIOS[key](ctx)
            except Exception:
                traceback.print_exc()
                failed.append(key)
                continue
            result.charts = charts.draw(result, args.results)
            report.write_result(result, args.results)
            results.append(result)
            print(report.markdown_section(result), flush=True)
            print(f"    ({time.monotonic() - t0:.0f} s)\n", flush=True)
    top = headline.build(results, quick=args.quick)
    if top is not None:
        top.charts = charts.draw(top, args.results)
        report.write_result(top, args.results)
        results.insert(0, top)
        print(report.markdown_section(top), flush=True)
    meta = {
        "quick": args.quick,
        "machine": report.machine(),
        "finished_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.monotonic() - started, 1),
        "sidecar_bin": str(args.sidecar_bin),
        "sidecar_sha256": sidecar_sha256,
    }
    report.write_summary(results, meta, args.results)
    problems = check_results(args.results, [r.key for r in results])
    for problem in problems:
        print(f"malformed output: {problem}")
    print(f"==> done in {meta['duration_s']:.0f} s; results in {args.results}")
    if failed:
        print(f"scenarios that failed: {failed}")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
