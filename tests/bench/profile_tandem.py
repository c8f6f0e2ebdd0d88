"""Profiles for a missed target: ``python tests/bench/profile_tandem.py [--tool search]``.

Drives ``tandem`` with 256 agents calling back to back (as scenario 4 does), then records
the brain with py-spy (Python stacks, including the gRPC Cython frames) and the sidecar
with ``perf record --call-graph dwarf`` (Rust stacks; the release build keeps line tables),
one after the other, and prints the hottest frames of each. Files land in
``results/profiles/``: ``brain_<tool>.txt`` (py-spy raw, one collapsed stack per line,
feed it to any flame-graph tool) and ``sidecar_<tool>.perf.data`` (``perf report -i``).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.documents import SEARCH_SELECT
from benchlib.nginx import Nginx
from benchlib.runner import REPO, AgentProcess, sidecar_for

PY_SPY = Path(sys.executable).with_name("py-spy")


def hottest_python(raw: Path, top: int) -> list[str]:
    """Self time by function from py-spy's raw output, as percentages."""
    self_time: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        self_time[stack.split(";")[-1].split(" (")[0]] += int(count)
    return [f"{100 * n / total:5.1f}%  {name}" for name, n in self_time.most_common(top)]


def hottest_native(data: Path, top: int) -> list[str]:
    """Inclusive time of the sidecar's frames, from ``perf report``."""
    report = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--children",
            "--sort",
            "symbol",
            "--stdio",
            "-g",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    ).stdout
    wrappers = ("(inlined)", "] poll", "] call_once", "] catch_unwind", "] do_call", "] with_mut")
    lines = [
        line.strip()[:140]
        for line in report.splitlines()
        if "%" in line and "[.]" in line and not any(w in line for w in wrappers)
    ]
    return lines[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tool", choices=["search", "ping", "ping_h2"], default="search")
    parser.add_argument("--select", action="store_true", help="ask for three fields only")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument(
        "--native", action="store_true", help="py-spy --native: C frames (uvloop, protobuf) too"
    )
    parser.add_argument(
        "--sidecar-bin", type=Path, default=REPO / "sidecar-rs/target/release/sidecar"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results/profiles"
    )
    args = parser.parse_args()
    if not PY_SPY.exists() or shutil.which("perf") is None:
        print("needs py-spy (tests/bench/requirements.txt) and perf (Debian: linux-perf)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    brain_raw = args.out / f"brain_{args.tool}.txt"
    sidecar_data = args.out / f"sidecar_{args.tool}.perf.data"
    with Nginx() as nginx, sidecar_for(nginx, args.sidecar_bin) as sidecar:
        assert sidecar.proc is not None
        agents = AgentProcess(
            {
                "dispatcher": "tandem",
                "mode": "burst",
                "tool": args.tool,
                "select": list(SEARCH_SELECT) if args.select else [],
                "concurrency": 256,
                "warmup_calls": 1000,
                "calls": 10_000_000,  # stopped by the deadline below, never reached
                "loop": "uvloop",
                "upstream": nginx.base_url,
                "sidecar": sidecar.unix_target,
                "frames": str(sidecar.frames_socket),
                "deadline_s": 2 * args.seconds + 60,
            }
        )
        try:
            agents.wait_for("ready", 60)
            agents.wait_for("window-start", 60)
            # --native needs the process paused per sample (not --nonblocking).
            mode = ["--native"] if args.native else ["--nonblocking"]
            record = [str(PY_SPY), "record", "--format", "raw", *mode, "--rate", "250"]
            subprocess.run(
                [*record, "-d", str(args.seconds), "-o", str(brain_raw), "-p", str(agents.pid)],
                check=True,
                capture_output=True,
                timeout=args.seconds + 60,
            )
            perf = ["perf", "record", "-F", "299", "--call-graph", "dwarf,16384"]
            target = ["-o", str(sidecar_data), "-p", str(sidecar.proc.pid)]
            subprocess.run(
                [*perf, *target, "--", "sleep", str(args.seconds)],
                check=True,
                capture_output=True,
                timeout=args.seconds + 60,
            )
        finally:
            agents.proc.kill()
            agents.close()
    print(f"==> brain (py-spy, self time): {brain_raw}")
    print("\n".join(hottest_python(brain_raw, 15)))
    print(f"==> sidecar (perf, inclusive): {sidecar_data}")
    print("\n".join(hottest_native(sidecar_data, 40)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
