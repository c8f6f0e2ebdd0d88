"""`make run`: the whole pod on one machine, end to end, then a clean shutdown.

Starts, in the order Kubernetes would:
1. the demo tool service (``python -m demo_tools``) on a free loopback port,
2. the sidecar on a unix socket (like the pod's shared emptyDir), with the demo
   tools.yaml pointed at that port,
3. the brain's demo agents (``python -m brain demo``) against the socket,

prints the agents' summary and the sidecar's own metrics, then stops the brain side
first and the sidecar after it (SIGTERM, drain), and checks every process exited cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

BRAIN_PY = Path(__file__).resolve().parents[1]
TOOLS_YAML = BRAIN_PY / "src/demo_tools/tools.yaml"
DEMO_BASE = "http://127.0.0.1:8081"


class LineWatcher:
    """Reads a child's output on a thread (so its pipe never fills) and finds lines in it."""

    def __init__(self, stream: IO[str], what: str) -> None:
        self.what = what
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip())
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line matching ``pattern``; exits with the output seen if none comes."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        checked = 0
        with self._cond:
            while True:
                for line in self.lines[checked:]:
                    if match := regex.search(line):
                        return match
                checked = len(self.lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    tail = "\n".join(self.lines[-20:])
                    raise SystemExit(f"{self.what} did not start:\n{tail}")
                self._cond.wait(left)


def sidecar_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    rows = []
    for line in text.splitlines():
        m = re.match(r'sidecar_tool_calls_total\{status="(\w+)",tool="([\w.-]+)"\} (\d+)', line)
        if m:
            rows.append(f"  {m.group(2):<16} {m.group(1):<18} {m.group(3):>6}")
    return "\n".join(sorted(rows))


def stop(proc: subprocess.Popen[str], name: str, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"{name} did not stop within {timeout}s and was killed", file=sys.stderr)
        return -9
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sidecar-bin", type=Path, required=True)
    parser.add_argument("--agents", type=int, default=120)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tandem-demo-"))
    socket = workdir / "sidecar.sock"
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    python = sys.executable
    try:
        print("==> starting the demo tool service")
        tools = subprocess.Popen(
            [python, "-u", "-m", "demo_tools", "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(("demo tools", tools))
        assert tools.stdout is not None
        base = LineWatcher(tools.stdout, "demo tools").wait(r"listening on (http://\S+)", 30)[1]
        print(f"    {base}")

        config = workdir / "tools.yaml"
        config.write_text(TOOLS_YAML.read_text().replace(DEMO_BASE, base))
        print("==> starting the sidecar")
        sidecar = subprocess.Popen(
            [
                str(args.sidecar_bin),
                "--config",
                str(config),
                "--listen",
                f"unix:{socket}",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        procs.append(("sidecar", sidecar))
        assert sidecar.stderr is not None
        sidecar_log = LineWatcher(sidecar.stderr, "sidecar")
        line = sidecar_log.wait(r'"message":"metrics listening"', 30).string
        metrics_port = int(json.loads(line)["addr"].rsplit(":", 1)[1])
        sidecar_log.wait(r'"message":"sidecar ready"', 30)
        print(f"    unix:{socket}, metrics on :{metrics_port}")
        subprocess.run([python, "-m", "brain", "--sidecar", f"unix:{socket}", "tools"], check=True)

        print(f"==> running {args.agents} concurrent agents through the sidecar")
        started = time.perf_counter()
        demo = subprocess.run(
            [
                python,
                "-m",
                "brain",
                "--sidecar",
                f"unix:{socket}",
                "demo",
                "--agents",
                str(args.agents),
            ],
            check=False,
        )
        print(f"    brain exited {demo.returncode} after {time.perf_counter() - started:.1f}s")
        print("==> the sidecar's view (sidecar_tool_calls_total)")
        print(sidecar_metrics(metrics_port))

        print("==> shutting down: sidecar (drain) then tool service")
        codes = {
            "sidecar": stop(sidecar, "sidecar", 30),
            "demo tools": stop(tools, "demo tools", 10),
        }
        procs.clear()
        print("    " + json.dumps(codes))
        clean = all(code == 0 for code in codes.values()) and not socket.exists()
        print("==> done: stopped cleanly" if clean else "==> done: shutdown was NOT clean")
        return 0 if demo.returncode == 0 and clean else 1
    finally:
        for name, proc in reversed(procs):
            stop(proc, name, 10)


if __name__ == "__main__":
    sys.exit(main())
