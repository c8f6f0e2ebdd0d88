"""`make run`: the whole pod on one machine, end to end, then a clean shutdown.

Starts, in the order Kubernetes would:
1. the demo tool service (``python -m demo_tools``) on a free loopback port,
2. with ``--planner openai`` only: a llama.cpp server (``xllamacpp``, the bundled
   SmolLM2-135M-Instruct GGUF) on a free loopback port, with an API key made up for this
   run (``demo_tools.llamacpp``),
3. the sidecar on a unix socket (like the pod's shared emptyDir), with the demo
   tools.yaml pointed at that port (and, for ``openai``, the ``llm`` tool pointed at the
   llama.cpp server; the key is in the sidecar's environment only, never the brain's),
4. the brain's HTTP API (``python -m brain serve``) with the planner asked for
   (``--planner``: ``router`` with the bundled embedding model, ``local`` with the
   bundled SmolLM2-135M-Instruct converted once into ~/.cache/tandem, or ``openai``
   through the sidecar's ``llm`` tool), and waits for ``/readyz``,

then submits the demo tasks through the API, all at once so that the planner's model
requests share batches (``python -m demo_tools.client``), shows progress, prints every task's
steps and answer and a summary, and the sidecar's own view. Finally it stops the brain
first (SIGTERM: drain), the sidecar after it, then the tool service and the llama.cpp
server, and checks that every process it started exited cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket as socket_module
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import yaml

from demo_tools.config import local_tools_yaml
from demo_tools.llamacpp import SMALL_MODEL_FLAGS, LlamaCppServer, llm_tool

BRAIN_PY = Path(__file__).resolve().parents[1]
TOOLS_YAML = BRAIN_PY / "src/demo_tools/tools.yaml"
DEMO_BASE = "http://127.0.0.1:8081"


class LineWatcher:
    """Reads a child's output on a thread (so its pipe never fills) and finds lines in it."""

    def __init__(self, stream: IO[str], what: str, echo: bool = False) -> None:
        self.what = what
        self.echo = echo
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                if self.echo:
                    print(f"    [{self.what}] {line.rstrip()}", flush=True)
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

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def sidecar_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    rows = []
    for line in text.splitlines():
        if not line.startswith("sidecar_tool_calls_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        value = line.rsplit(" ", 1)[1]
        rows.append(f"  {labels.get('tool', ''):<16} {labels.get('status', ''):<18} {value:>6}")
    return "\n".join(sorted(rows))


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float) -> None:
    """Poll ``/readyz`` until 200 (the model is loaded and the sidecar reachable)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the brain exited with {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"the brain was not ready within {timeout}s")


def uses_fleet_limits(config_text: str) -> bool:
    """Whether any tool has a `scope: fleet` rate limit (which needs Redis)."""
    config = yaml.safe_load(config_text)
    return any(
        limit.get("scope") == "fleet"
        for tool in config.get("tools", [])
        for limit in tool.get("rate_limits", [])
    )


def start_redis(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    """A throwaway redis-server on a free loopback port, for fleet-wide limits."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("the tools use fleet-wide limits: install redis-server (make system-deps)")
    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket_module.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


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
    parser.add_argument("--tasks", type=int, default=120, help="demo tasks to submit")
    parser.add_argument("--concurrency", type=int, default=0, help="default: all at once")
    parser.add_argument(
        "--tools", type=Path, help="a tools.yaml to use instead of the demo's (same upstreams)"
    )
    parser.add_argument("--planner", choices=("router", "local", "openai"), default="router")
    parser.add_argument("--model-dir", type=Path, help="local: a transformers causal LM")
    parser.add_argument("--gguf", type=Path, help="local and openai: a GGUF file")
    parser.add_argument(
        "--deadline", type=float, default=0, help="seconds per run (default: 60; LLMs 600)"
    )
    args = parser.parse_args()
    if args.model_dir and args.planner != "local":
        parser.error("--model-dir is for --planner local (openai serves a GGUF: --gguf)")
    deadline = args.deadline or (60.0 if args.planner == "router" else 600.0)

    workdir = Path(tempfile.mkdtemp(prefix="tandem-demo-"))
    socket = workdir / "sidecar.sock"
    frames = workdir / "frames.sock"
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    watchers: list[LineWatcher] = []
    llama: LlamaCppServer | None = None
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        print("==> starting the demo tool service")
        tools = subprocess.Popen(
            [python, "-u", "-m", "demo_tools", "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(("demo tools", tools))
        assert tools.stdout is not None
        tools_out = LineWatcher(tools.stdout, "demo tools")
        watchers.append(tools_out)
        base = tools_out.wait(r"listening on (http://\S+)", 30)[1]
        print(f"    {base}")

        config = workdir / "tools.yaml"
        tools_text = (args.tools or TOOLS_YAML).read_text()
        tools_config = yaml.safe_load(local_tools_yaml(tools_text, replace={DEMO_BASE: base}))
        sidecar_env = {**env, "RUST_LOG": os.environ.get("RUST_LOG", "info")}
        planner_args = ["--planner", args.planner]
        if args.planner == "openai":
            # A key made up for this run, given to the llama.cpp process and the sidecar's
            # environment only: the brain sends requests through the sidecar's `llm`
            # tool, which adds it (llama.cpp answers 401 without it).
            key = "sk-demo-" + secrets.token_urlsafe(18)
            slots = max(1, min(4, args.concurrency or args.tasks))
            print(f"==> starting a llama.cpp server (xllamacpp, {slots} slots, 1 thread)")
            # One thread: on shared cores llama.cpp's spinning worker threads slow each
            # other down (docs/brain.md); each slot gets a 4k context.
            llama = LlamaCppServer(
                api_key=key,
                model=args.gguf,
                threads=1,
                parallel=slots,
                ctx=4096 * slots,
                log_path=workdir / "llama-server.log",
            ).start(timeout=300)
            print(f"    {llama.url} (model {llama.model.name}, log {llama.log_path})")
            tools_config["tools"].append(llm_tool(llama.url))
            sidecar_env["LLM_API_KEY"] = key
            planner_args += list(SMALL_MODEL_FLAGS)
        config.write_text(local_tools_yaml(tools_config))
        redis_args: list[str] = []
        if uses_fleet_limits(config.read_text()):
            redis, redis_url = start_redis(workdir)
            procs.append(("redis", redis))
            redis_args = ["--redis-url", redis_url]
            print(f"==> fleet-wide limits configured: started redis-server at {redis_url}")
        print("==> starting the sidecar")
        sidecar = subprocess.Popen(
            [
                str(args.sidecar_bin),
                "--config",
                str(config),
                "--listen",
                f"unix:{socket}",
                "--listen",
                f"frames:{frames}",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                *redis_args,
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=sidecar_env,
        )
        procs.append(("sidecar", sidecar))
        assert sidecar.stderr is not None
        sidecar_log = LineWatcher(sidecar.stderr, "sidecar")
        watchers.append(sidecar_log)
        line = sidecar_log.wait(r'"message":"metrics listening"', 30).string
        metrics_port = int(json.loads(line)["addr"].rsplit(":", 1)[1])
        sidecar_log.wait(r'"message":"sidecar ready"', 30)
        print(f"    unix:{socket} and frames:{frames}, metrics on :{metrics_port}")
        subprocess.run([python, "-m", "brain", "--sidecar", f"unix:{socket}", "tools"], check=True)

        if args.planner == "local":
            # Half the cores for the model: the sidecar, the tool service and this demo's
            # client share them, and OpenMP threads spinning against them cost far more.
            planner_args += ["--llm-threads", str(max(1, (os.cpu_count() or 2) // 2))]
            if args.model_dir:
                planner_args += ["--model-dir", str(args.model_dir)]
            if args.gguf:
                planner_args += ["--gguf", str(args.gguf)]
            if not args.model_dir:
                print("==> preparing the local model (a GGUF is converted once, ~1 minute)")
                prepare = (
                    "import sys; from pathlib import Path; "
                    "from brain._engine.weights import prepare_model_dir; "
                    "print('    ' + str(prepare_model_dir("
                    "gguf=Path(sys.argv[1]) if sys.argv[1] else None)))"
                )
                subprocess.run([python, "-c", prepare, str(args.gguf or "")], check=True, env=env)
            print("==> starting the brain (local planner: causal LM, continuous batching)")
        elif args.planner == "openai":
            print("==> starting the brain (openai planner: llama.cpp through the sidecar)")
        else:
            print("==> starting the brain (router planner, bundled all-MiniLM-L6-v2 model)")
        started = time.perf_counter()
        brain = subprocess.Popen(
            [
                python,
                "-m",
                "brain",
                "--sidecar",
                f"unix:{socket}",
                "--sidecar-frames",
                str(frames),
                "--log-format",
                "json",
                "serve",
                *planner_args,
                "--port",
                "0",
                "--drain-timeout",
                "20",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(("brain", brain))
        assert brain.stdout is not None
        assert brain.stderr is not None
        brain_out = LineWatcher(brain.stdout, "brain")
        brain_log = LineWatcher(brain.stderr, "brain log")
        watchers += [brain_out, brain_log]
        url = brain_out.wait(r"brain listening on (http://\S+)", 120)[1]
        wait_ready(url, brain, 300)
        print(f"    {url} ready after {time.perf_counter() - started:.1f}s (model loaded)")

        concurrency = args.concurrency or args.tasks
        print(f"==> submitting {args.tasks} tasks to POST {url}/v1/runs ({concurrency} at once)")
        demo = subprocess.run(
            [
                python,
                "-m",
                "demo_tools.client",
                "--api",
                url,
                "--tasks",
                str(args.tasks),
                "--concurrency",
                str(concurrency),
                "--deadline",
                str(deadline),
            ],
            check=False,
            env=env,
        )
        print("==> the sidecar's view (sidecar_tool_calls_total)")
        print(sidecar_metrics(metrics_port))

        print(
            "==> shutting down: brain (drain), then sidecar (drain), then tool service"
            + (", then the llama.cpp server" if llama else "")
        )
        codes = {
            "brain": stop(brain, "brain", 40),
            "sidecar": stop(sidecar, "sidecar", 30),
            "demo tools": stop(tools, "demo tools", 10),
        }
        if llama is not None:
            code = llama.stop()
            codes["llama.cpp"] = 0 if code is None else code
            llama = None
        for name, proc in procs:
            if name == "redis":
                codes[name] = stop(proc, name, 10)
        procs.clear()
        drained = [ln for ln in brain_log.lines if '"drained' in ln]
        if drained:
            print("    brain: " + json.loads(drained[-1])["message"])
        print("    exit codes: " + json.dumps(codes))
        clean = all(code == 0 for code in codes.values()) and not socket.exists()
        print("==> done: stopped cleanly" if clean else "==> done: shutdown was NOT clean")
        return 0 if demo.returncode == 0 and clean else 1
    finally:
        for name, proc in reversed(procs):
            stop(proc, name, 10)
        if llama is not None:
            llama.stop()
        for watcher in watchers:
            watcher.join(5)


if __name__ == "__main__":
    sys.exit(main())
