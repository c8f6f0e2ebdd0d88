"""The sidecar's instructions per call, under callgrind: an A/B that machine noise cannot move.

``python tests/bench/instructions_per_call.py --sidecar-bin old=PATH --sidecar-bin new=PATH
[--tool ping --tool search ...]``

CPU seconds on a shared machine swing by a third between runs of the same binary, too much
to judge a change of a few µs per call. Instructions executed do not swing: this runs each
sidecar binary under ``valgrind --tool=callgrind`` with the benchmark's tools and nginx,
drives it with the benchmark's own agent process (``mode: burst``, tandem's frames client,
256 agents as in scenario 4), and reads the sidecar's instruction count (Ir) for a fixed
number of calls:

1. a warm-up run (connections to nginx open, pools and caches filled, code paged in);
2. ``callgrind_control --zero``;
3. the measured run: a new agent process making ``--calls`` calls;
4. ``callgrind_control --dump``; Ir of that dump / calls.

What it counts and what it does not:

* user-space instructions of the sidecar, every thread (the runtime, hyper, the walk, the
  allocator, libc): the part of a call the code decides;
* not the kernel's (the sockets' syscalls, the loopback TCP stack): ``perf`` sees those as
  CPU time, ``profile_tandem.py``;
* the measured run's own start (one frames connection and its handshake) is counted in
  it, a constant of both binaries spread over ``--calls`` calls;
* instructions are not time (a cache miss is one instruction); the sidecar's CPU per call
  is scenario 4's ``sidecar_us_per_call``.

Valgrind runs the threads one at a time and about 50 times slower, so latencies here mean
nothing; a dump ``callgrind.out.*`` per binary and tool lands in ``--out`` for
``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.nginx import Nginx
from benchlib.runner import REPO, measure, sidecar_for

#: valgrind's start on the sidecar (reading its debug info) takes tens of seconds.
START_TIMEOUT_S = 300.0
CONCURRENCY = 256


def wrapper(binary: Path, out: Path, label: str, directory: Path) -> Path:
    """A script that execs ``binary`` under callgrind (the pid stays callgrind's)."""
    script = directory / f"sidecar-under-callgrind-{label}"
    script.write_text(
        "#!/bin/sh\n"
        f'exec valgrind --tool=callgrind --callgrind-out-file="{out}" '
        f'--dump-instr=no --separate-threads=no "{binary}" "$@"\n'
    )
    script.chmod(0o755)
    return script


def control(pid: int, action: str) -> None:
    subprocess.run(
        ["callgrind_control", action, str(pid)],
        check=True,
        capture_output=True,
        timeout=120,
    )


def total_ir(dump: Path) -> int:
    """The instruction count in a callgrind dump (its ``totals:`` or ``summary:`` line)."""
    text = dump.read_text(errors="replace")
    found = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.MULTILINE)
    if not found:
        raise RuntimeError(f"no totals in {dump}")
    return int(found.group(1))


def burst(tool: str, calls: int) -> dict[str, object]:
    return {
        "dispatcher": "tandem",
        "mode": "burst",
        "tool": tool,
        "select": [],
        "concurrency": CONCURRENCY,
        "warmup_calls": 0,
        "calls": calls,
    }


def instructions_per_call(
    nginx: Nginx, label: str, binary: Path, tool: str, calls: int, out: Path
) -> float:
    dumps = out / f"callgrind.out.{label}.{tool}"
    with tempfile.TemporaryDirectory(prefix="tandem-callgrind-") as tmp:
        script = wrapper(binary, dumps, label, Path(tmp))
        with sidecar_for(nginx, script, start_timeout=START_TIMEOUT_S) as sidecar:
            assert sidecar.proc is not None
            pid = sidecar.proc.pid
            timeout = 600.0
            warm = measure(
                burst(tool, max(200, calls // 4)), nginx=nginx, sidecar=sidecar, timeout=timeout
            )
            if warm.errors:
                raise RuntimeError(f"{label}/{tool}: the warm-up failed: {warm.statuses}")
            control(pid, "--zero")
            m = measure(burst(tool, calls), nginx=nginx, sidecar=sidecar, timeout=timeout)
            if m.errors or m.calls < calls:
                raise RuntimeError(f"{label}/{tool}: {m.calls} calls, {m.statuses}")
            for old in out.glob(f"{dumps.name}.*"):
                old.unlink()
            control(pid, "--dump")
            produced = sorted(out.glob(f"{dumps.name}.*"), key=lambda p: p.stat().st_mtime)
            if not produced:
                raise RuntimeError(f"callgrind wrote no dump for {label}/{tool}")
            return total_ir(produced[-1]) / m.calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sidecar-bin",
        action="append",
        metavar="LABEL=PATH",
        help="a binary to measure (repeat to compare); default: this tree's release build",
    )
    parser.add_argument("--tool", action="append", choices=["ping", "ping_h2", "search", "catalog"])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results/callgrind"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind (Debian: valgrind)")
        return 2
    binaries: list[tuple[str, Path]] = []
    for item in args.sidecar_bin or [f"this={REPO / 'sidecar-rs/target/release/sidecar'}"]:
        label, sep, path = item.partition("=")
        if not sep or not label or not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            parser.error(f"--sidecar-bin {item!r}: expected LABEL=PATH (label: letters, digits)")
        if not Path(path).is_file():
            parser.error(f"--sidecar-bin {item!r}: no such file")
        binaries.append((label, Path(path).resolve()))
    tools = args.tool or ["ping", "search"]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"sidecar instructions per call (user space, callgrind), {args.calls} calls each")
    print(f"{'tool':<10}" + "".join(f"{label:>16}" for label, _ in binaries))
    with Nginx() as nginx:
        for tool in tools:
            counts = [
                instructions_per_call(nginx, label, binary, tool, args.calls, args.out)
                for label, binary in binaries
            ]
            line = f"{tool:<10}" + "".join(f"{c:>16,.0f}" for c in counts)
            if len(counts) > 1:
                line += "   " + "  ".join(f"{c / counts[0]:.3f}x" for c in counts[1:])
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
