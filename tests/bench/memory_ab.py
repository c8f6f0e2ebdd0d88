"""Scenario 3's sidecar rows alone, for several sidecar binaries in alternating rounds.

``python tests/bench/memory_ab.py --sidecar-bin old=PATH --sidecar-bin new=PATH [--rounds 2]``

Scenario 3 runs every stack once; a change to the sidecar's memory per in-flight call is
judged better by running only tandem's two rows (nginx over HTTP/1.1, and its HTTP/2
listener), 10,000 calls held, the binaries taking turns so that the machine's drift falls
on both. Peak RSS of the same binary moves by up to ~16 MiB between rounds; trust a
difference only when every round agrees.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.dispatchers import stacks
from benchlib.nginx import Nginx
from benchlib.runner import REPO, cores, open_files_to_the_limit
from benchlib.scenarios.base import Context
from benchlib.scenarios.memory import AGENTS, CANCEL_S, FILL_S, HOLD_S, START_S


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sidecar-bin", action="append", metavar="LABEL=PATH", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--agents", type=int, default=AGENTS)
    args = parser.parse_args()
    binaries: list[tuple[str, Path]] = []
    for item in args.sidecar_bin:
        label, sep, path = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", label) or not Path(path).is_file():
            parser.error(f"--sidecar-bin {item!r}: expected LABEL=PATH to a file")
        binaries.append((label, Path(path).resolve()))
    open_files_to_the_limit()
    tandem = stacks(len(cores()), pin=True)["tandem"]
    with Nginx() as nginx:
        for round_ in range(args.rounds):
            for label, binary in binaries:
                ctx = Context(
                    quick=False,
                    nginx=nginx,
                    sidecar_bin=binary,
                    results_dir=Path("/tmp"),
                    repo=REPO,
                    log=lambda _: None,
                )
                for tool in ("slow_search", "slow_search_h2"):
                    config = {
                        **tandem,
                        "tool": tool,
                        "mode": "memory",
                        "agents": args.agents,
                        "hold_s": HOLD_S,
                        "hold_deadline_s": FILL_S[0],
                        "cancel_deadline_s": CANCEL_S[0],
                    }
                    m = ctx.run(config, timeout=START_S + FILL_S[0] + HOLD_S + CANCEL_S[0])
                    n = int(m.extra.get("in_flight_at_stop", 0))
                    peak = m.peak_rss["sidecar"]
                    ready = m.ready_rss.get("sidecar", 0)
                    marginal = (peak - ready) / n / 1024 if n else float("nan")
                    print(
                        f"round {round_} {label:<12} {tool:<15} in flight {n:>6}  sidecar peak "
                        f"{peak / 2**20:6.1f} MiB  {marginal:5.1f} KiB/call above idle",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
