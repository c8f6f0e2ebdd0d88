"""`make run PLANNER=openai` end to end, on two demo tasks: every process real, no network.

The demo script (``brain-py/scripts/demo_stack.py``) starts the demo tool service, a
llama.cpp server (xllamacpp, the bundled SmolLM2-135M-Instruct) on loopback, the sidecar
with the ``llm`` tool pointed at it and the brain with the openai planner; the demo client
submits the tasks through the brain's HTTP API. The test checks what the demo prints (each
task's steps and answer, the summary, the sidecar's own count of ``llm`` calls, every exit
code) and that it stopped exactly what it started: no process carrying this test's marker
in its environment is left once the demo has exited.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO, sidecar_binary

DEMO = REPO / "brain-py/scripts/demo_stack.py"

# Prompt processing of the tool list on a busy 2-core machine takes minutes.
pytestmark = pytest.mark.timeout(1500)


def processes_with(marker: str) -> list[int]:
    """Processes of this user whose environment carries ``marker`` (inherited by every
    child the demo starts: tool service, llama.cpp, sidecar, brain, client)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if marker.encode() in environ:
            found.append(int(entry.name))
    return found


def test_the_openai_demo_runs_two_tasks_through_llama_cpp_and_stops_what_it_started(
    tmp_path: Path,
) -> None:
    marker = f"TANDEM_TEST_MARK={secrets.token_hex(8)}"
    name, value = marker.split("=")
    env = {**os.environ, name: value, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            "--sidecar-bin",
            str(sidecar_binary()),
            "--planner",
            "openai",
            "--tasks",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1400,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "==> starting a llama.cpp server (xllamacpp" in out
    # Two tasks, each with its steps and a final line with the answer.
    assert re.findall(r"^\[(\d)\] ", out, re.M) == ["1", "2"], out
    assert len(re.findall(r"^    step 1: \w+\(", out, re.M)) == 2, out
    finals = re.findall(r"^    (succeeded|failed|timed_out) in \d+ ms: (.*)$", out, re.M)
    assert len(finals) == 2, out
    assert all(state == "succeeded" and answer.strip() for state, answer in finals), finals
    assert "summary: 2/2 runs" in out
    # Every planning request went through the sidecar's llm tool and llama.cpp took it
    # (the key only the sidecar holds was accepted: a refused one is upstream_error).
    llm_rows = re.findall(r"^  llm\s+(\w+)\s+(\d+)$", out, re.M)
    assert [status for status, _ in llm_rows] == ["ok"], llm_rows
    assert sum(int(n) for _, n in llm_rows) >= 4, llm_rows  # two steps per run at least
    # Stopped in order, each cleanly, and nothing it started is left running.
    codes = json.loads(re.search(r"exit codes: (\{.*\})", out)[1])  # type: ignore[index]
    assert codes == {"brain": 0, "sidecar": 0, "demo tools": 0, "llama.cpp": 0}, codes
    assert "==> done: stopped cleanly" in out
    assert processes_with(marker) == []
    # The key made up for the run is never printed (nor logged by the brain).
    assert "sk-demo-" not in out + done.stderr
