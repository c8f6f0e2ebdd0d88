"""tandem past its capacity, one step per sidecar variant, with what the sidecar saw.

    .venv/bin/python tests/bench/overload_probe.py --agents 13000 --cpus 0-7 \\
        --upstream-cpus 12-15 --variant "" --variant "--frames-shared-room-wait 1ms"

Each variant (extra sidecar flags, one string each) gets a fresh sidecar and one step of
scenario 1's agents (think 800 ms ± 25%, one ``search`` call per step) at ``--agents``.
Printed per variant: calls/s answered (any status), p99, the statuses the agents got, CPU per
call by process, the sidecar's counters over the step (results by status, results placed
in the shared region) and its undelivered-results gauges every half second. This is how
the 8-core collapse of ``docs/performance.md`` (the scale-out section) was found: with
the default room wait, 13,000 agents got a third of the calls/s 10,000 held and most
results travelled on the socket.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.nginx import Nginx
from benchlib.runner import REPO, measure, open_files_to_the_limit  # + tests/ on the path
from benchlib.tools import sidecar_config
from scale_out import cpu_list

from harness import SidecarProcess, scrape

COUNTERS = (
    "sidecar_tool_calls_total",
    "sidecar_frames_shared_results_total",
)
GAUGES = ("sidecar_undelivered_results", "sidecar_undelivered_result_bytes")


def _flat(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]], names: tuple[str, ...]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        for labels, value in samples.get(name, {}).items():
            shown = ",".join(f"{k}={v}" for k, v in labels if k in ("status", "outcome"))
            out[f"{name}{{{shown}}}" if shown else name] = value
    return out


def probe(nginx: Nginx, binary: Path, agents: int, flags: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="tandem-probe-") as tmp:
        sidecar = SidecarProcess(
            Path(tmp),
            sidecar_config(nginx.base_url, h2_base_url=nginx.h2_base_url),
            *flags,
            env={"RUST_LOG": "warn,sidecar=info"},
            binary=binary,
        )
        sidecar.start(timeout=30)
        try:
            before = _flat(scrape(sidecar.metrics_port), COUNTERS)
            gauges: list[tuple[float, dict[str, float]]] = []
            stop = threading.Event()

            def sample() -> None:
                t0 = time.monotonic()
                while not stop.wait(0.5):
                    now = _flat(scrape(sidecar.metrics_port), GAUGES)
                    gauges.append((round(time.monotonic() - t0, 1), now))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            config: dict[str, Any] = {
                "dispatcher": "tandem",
                "mode": "think",
                "tool": "search",
                "agents": agents,
                "think_ms": 800,
                "think_jitter": 0.25,
                "warmup_s": 1.5,
                "measure_s": 4.0,
            }
            m = measure(config, nginx=nginx, sidecar=sidecar, timeout=70)
            stop.set()
            sampler.join()
            after = _flat(scrape(sidecar.metrics_port), COUNTERS)
        finally:
            sidecar.terminate(timeout=15)
    print(
        f"== {agents} agents, sidecar flags {flags or 'none'}: {m.calls_per_s:.0f} calls/s, "
        f"p99 {m.latency['p99_ms']:.0f} ms, statuses {m.statuses}"
    )
    print("   CPU µs per call", {k: round(v * 1e6 / max(1, m.calls)) for k, v in m.cpu_s.items()})
    print("   over the step", {k: after[k] - before.get(k, 0) for k in after})
    print("   undelivered every 0.5 s", [g for _, g in gauges])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=13_000)
    parser.add_argument("--cpus", type=cpu_list, help="the CPUs under test, e.g. 0-7")
    parser.add_argument("--upstream-cpus", type=cpu_list, help="nginx's own CPUs, e.g. 12-15")
    parser.add_argument("--variant", action="append", default=[], help="sidecar flags")
    parser.add_argument(
        "--sidecar-bin", type=Path, default=REPO / "sidecar-rs/target/release/sidecar"
    )
    args = parser.parse_args(argv)
    open_files_to_the_limit()
    if args.cpus:
        os.sched_setaffinity(0, args.cpus)
    with Nginx(cpus=args.upstream_cpus) as nginx:
        for variant in args.variant or [""]:
            probe(nginx, args.sidecar_bin, args.agents, shlex.split(variant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
