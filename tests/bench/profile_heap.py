"""Where the sidecar's memory per in-flight call goes: ``make profile-heap``.

    .venv/bin/python tests/bench/profile_heap.py [--agents 10000] [--sidecar-bin PATH]
        [--tool slow_search_h2]

Runs scenario 3's tandem row (``AGENTS`` calls held in flight on nginx's slow location)
with the sidecar under heaptrack, then prints the heap's peak consumers, each with its
share per in-flight call, and the allocations that were many at once before the peak but
are gone at it (what the burst of calls held while connecting,
``benchlib/heap_trace.py``). heaptrack intercepts ``malloc``, so the sidecar must be built
on the system allocator: ``make profile-heap`` builds it (``cargo build --profile
profiling --no-default-features``; the shipped binary uses mimalloc, whose RSS differs,
but the allocations are the same). The sidecar is exec'd under heaptrack's preload library
rather than run by the ``heaptrack`` script, so the benchmark signals the sidecar itself
(drain on SIGTERM) and its RSS is measured as usual. The recording lands in
``results/profiles/sidecar_heap.zst`` (``heaptrack_gui`` or ``heaptrack_print`` reads it).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.heap_trace import transients
from benchlib.nginx import Nginx
from benchlib.runner import REPO, measure, open_files_to_the_limit, sidecar_for

PRELOAD = Path("/usr/lib/heaptrack/libheaptrack_preload.so")
INTERPRET = Path("/usr/lib/heaptrack/libexec/heaptrack_interpret")

WRAPPER = """#!/bin/sh
# The sidecar under heaptrack's preload; exec keeps the pid the sidecar's.
mkfifo "{fifo}"
("{interpret}" < "{fifo}" | zstd -q -c > "{out}"; touch "{done}") &
exec env LD_PRELOAD="{preload}" DUMP_HEAPTRACK_OUTPUT="{fifo}" "{binary}" "$@"
"""

#: A consumer line of ``heaptrack_print --print-peaks``: "95.24M consumed over 10000 calls".
CONSUMER = re.compile(r"^\s*([\d.]+)([BKMG]) consumed over (\d+) calls from:")
UNITS = {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def consumers(report: str, top: int) -> list[tuple[float, str]]:
    """(bytes, the allocation's nearest frames in a crate) of the largest consumers."""
    out: list[tuple[float, str]] = []
    lines = report.splitlines()
    for i, line in enumerate(lines):
        m = CONSUMER.match(line)
        if not m:
            continue
        frames = []
        for follow in lines[i + 1 : i + 60]:
            if CONSUMER.match(follow) or "peak memory consumed" in follow:
                break
            where = re.search(r"at (?:\S*/registry/src/[^/]+/)?(\S+:\d+)", follow)
            if where and "/rustc/" not in follow and "library/" not in where.group(1):
                frames.append(where.group(1))
            if len(frames) == 3:
                break
        out.append((float(m.group(1)) * UNITS[m.group(2)], " <- ".join(frames)))
    out.sort(reverse=True)
    return out[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument(
        "--sidecar-bin",
        type=Path,
        default=REPO / "sidecar-rs/target/profiling-sys/profiling/sidecar",
        help="a sidecar built with --no-default-features (system allocator)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results/profiles"
    )
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--tool",
        choices=("slow_search", "slow_search_h2"),
        default="slow_search",
        help="slow_search_h2: the calls on nginx's HTTP/2 listener (one connection)",
    )
    args = parser.parse_args()
    if not PRELOAD.exists() or shutil.which("heaptrack_print") is None:
        print("needs heaptrack (Debian: heaptrack)")
        return 2
    if not args.sidecar_bin.exists():
        print(f"no sidecar at {args.sidecar_bin}: `make profile-heap` builds it")
        return 2
    open_files_to_the_limit()
    args.out.mkdir(parents=True, exist_ok=True)
    recording = args.out / "sidecar_heap.zst"
    with tempfile.TemporaryDirectory(prefix="tandem-heap-") as tmp:
        wrapper = Path(tmp) / "sidecar"
        wrapper.write_text(
            WRAPPER.format(
                fifo=Path(tmp) / "fifo",
                interpret=INTERPRET,
                out=recording,
                done=Path(tmp) / "done",
                preload=PRELOAD,
                binary=args.sidecar_bin.resolve(),
            )
        )
        wrapper.chmod(0o755)
        with Nginx() as nginx, sidecar_for(nginx, wrapper) as sidecar:
            m = measure(
                {
                    "dispatcher": "tandem",
                    "mode": "memory",
                    "tool": args.tool,
                    "agents": args.agents,
                    "hold_s": 2.0,
                    "hold_deadline_s": 120.0,
                },
                nginx=nginx,
                sidecar=sidecar,
                timeout=180,
            )
        # The interpreter finishes the recording once the sidecar has exited.
        deadline = time.monotonic() + 120
        while not (Path(tmp) / "done").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    in_flight = int(m.extra.get("in_flight_at_stop", 0)) or 1
    peak = m.peak_rss.get("sidecar", 0)
    ready = m.ready_rss.get("sidecar", 0)
    print(
        f"{in_flight:,} calls in flight: sidecar peak RSS {peak / 2**20:.0f} MiB "
        f"({(peak - ready) / in_flight / 1024:.1f} KiB per call above idle)"
    )
    report = subprocess.run(
        [
            "heaptrack_print",
            "-f",
            str(recording),
            "--print-peaks",
            "1",
            "--print-allocators",
            "0",
            "--print-temporary",
            "0",
            "--print-leaks",
            "0",
            "-n",
            str(4 * args.top),
            "-s",
            str(4 * args.top),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    ).stdout
    print(f"==> heap at its peak, per in-flight call ({recording}):")
    for size, where in consumers(report, args.top):
        print(f"{size / in_flight / 1024:8.2f} KiB  {where}")
    # RSS peaks above the heap's peak: what the burst of calls held while connecting and
    # waiting for heads was freed before the heap's peak, but its pages were touched.
    print("==> allocated and freed before the heap's peak: most alive at once, beyond the peak")
    for t in transients(recording, args.top):
        print(
            f"{t.bytes_beyond_peak / 2**20:6.1f} MiB  {t.size:>6,} B x {t.most_alive:>6,} at once "
            f"({t.alive_at_peak:,} at the peak, {t.allocated:,} made)  {t.where}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
