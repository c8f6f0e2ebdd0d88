"""``make load``: start the stack on this machine and run locust headless against it.

    .venv/bin/python tests/load/run_load.py [--users 40] [--run-time 60s]
    .venv/bin/python tests/load/run_load.py --host https://brain.example.internal

Without ``--host`` it starts the demo tool service, the sidecar (unix socket for the brain,
token-protected TCP for locust's gRPC user) and ``brain serve``, all on loopback, then runs
``tests/load/locustfile.py``. With ``--host`` it starts nothing and drives that brain API
(e.g. a Kubernetes Service reached through ``kubectl port-forward``); add
``--sidecar-target``/``--sidecar-token`` to drive a reachable sidecar too. Reports:
``results/load_*.csv`` and ``results/load.html``. The exit code is locust's: non-zero when
any request failed unexpectedly. Every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEMO_TOOLS_YAML = REPO / "brain-py/src/demo_tools/tools.yaml"
DEMO_BASE = "http://127.0.0.1:8081"


class Lines:
    """A process's output lines, read on a thread, searchable with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip())
        self._lines.put(None)

    def wait(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        tail = "\n".join(self.seen[-20:])
        raise TimeoutError(f"no line matching {pattern!r} within {timeout:.0f}s:\n{tail}")


@contextmanager
def process(args: list[str], name: str, **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    """Start ``args``; on exit SIGTERM it, then SIGKILL after 15 s."""
    print(f"==> starting {name}", flush=True)
    proc = subprocess.Popen(args, text=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        print(f"    {name} exited {proc.returncode}", flush=True)


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready within {timeout:.0f}s")


def start_stack(stack: ExitStack, workdir: Path, sidecar_bin: Path) -> tuple[str, str, str]:
    """Demo tools, sidecar and brain on loopback: (brain URL, sidecar TCP target, token)."""
    python = sys.executable
    tools = stack.enter_context(
        process(
            [python, "-u", "-m", "demo_tools", "--host", "127.0.0.1", "--port", "0"],
            "demo tool service",
            stdout=subprocess.PIPE,
        )
    )
    assert tools.stdout is not None
    base = Lines(tools.stdout).wait(r"listening on (http://\S+)", 30)[1]
    config = workdir / "tools.yaml"
    config.write_text(DEMO_TOOLS_YAML.read_text().replace(DEMO_BASE, base))
    socket = workdir / "sidecar.sock"
    token = os.urandom(16).hex()
    sidecar = stack.enter_context(
        process(
            [
                str(sidecar_bin),
                "--config",
                str(config),
                "--listen",
                f"unix:{socket}",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ],
            "sidecar",
            stderr=subprocess.PIPE,
            env={**os.environ, "SIDECAR_AUTH_TOKEN": token, "RUST_LOG": "warn,sidecar=info"},
        )
    )
    assert sidecar.stderr is not None
    logs = Lines(sidecar.stderr)
    port = logs.wait(r'"message":"listening".*"addr":"127\.0\.0\.1:(\d+)"', 30)[1]
    logs.wait(r'"message":"sidecar ready"', 30)
    brain = stack.enter_context(
        process(
            [
                python,
                "-u",
                "-m",
                "brain",
                "--sidecar",
                f"unix:{socket}",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ],
            "brain API",
            stdout=subprocess.PIPE,
            env={**os.environ, "BRAIN_LOG_LEVEL": os.environ.get("BRAIN_LOG_LEVEL", "warning")},
        )
    )
    assert brain.stdout is not None
    url = Lines(brain.stdout).wait(r"brain listening on (http://\S+)", 120)[1]
    wait_ready(f"{url}/readyz", 180)
    print(f"    brain {url}, sidecar 127.0.0.1:{port} and unix:{socket}", flush=True)
    return url, f"127.0.0.1:{port}", token


def run_locust(args: argparse.Namespace, host: str, sidecar: str, token: str) -> int:
    args.results.mkdir(parents=True, exist_ok=True)
    users = ["BrainRunUser"] + (["SidecarInvokeUser"] if sidecar else [])
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.run_time,
        "--stop-timeout",
        "40",
        "--host",
        host,
        "--csv",
        str(args.results / "load"),
        "--html",
        str(args.results / "load.html"),
        "--only-summary",
        "--exit-code-on-error",
        "1",
        *(["--sidecar-target", sidecar, "--sidecar-token", token] if sidecar else []),
        *users,
    ]
    print(
        f"==> locust: {args.users} users ({', '.join(users)}) for {args.run_time} against {host}",
        flush=True,
    )
    limit = _seconds(args.run_time) + 120
    try:
        return subprocess.run(command, timeout=limit, check=False).returncode
    except subprocess.TimeoutExpired:
        print(f"locust did not finish within {limit:.0f}s", flush=True)
        return 1


def _seconds(run_time: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    total = sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", run_time))
    return float(total or int(run_time))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="", help="a running brain API; nothing is started")
    parser.add_argument(
        "--sidecar-target", default="", help="with --host: a sidecar gRPC host:port"
    )
    parser.add_argument("--sidecar-token", default=os.environ.get("SIDECAR_AUTH_TOKEN", ""))
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--run-time", default="60s")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument(
        "--sidecar-bin", type=Path, default=REPO / "sidecar-rs/target/release/sidecar"
    )
    args = parser.parse_args()
    if args.host:
        return run_locust(args, args.host, args.sidecar_target, args.sidecar_token)
    # The processes stop (ExitStack) before their directory is removed.
    with tempfile.TemporaryDirectory(prefix="tandem-load-") as tmp, ExitStack() as stack:
        host, sidecar, token = start_stack(stack, Path(tmp), args.sidecar_bin)
        code = run_locust(args, host, sidecar, token)
    print(f"==> reports: {args.results}/load_stats.csv, load.html; exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
