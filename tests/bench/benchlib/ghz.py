"""``ghz`` (a Go gRPC load generator) against the sidecar's unary ``Invoke``."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Installed by ``make bench`` with ``go install github.com/bojand/ghz/cmd/ghz@...``.
GHZ_VERSION = "v0.120.0"


def ghz_binary() -> str | None:
    found = shutil.which("ghz")
    if found:
        return found
    gopath = Path(os.environ.get("GOPATH", Path.home() / "go"))
    candidate = gopath / "bin" / "ghz"
    return str(candidate) if candidate.exists() else None


@dataclass
class GhzRun:
    report: dict[str, Any]
    cpu_s: float  # ghz's own user + system CPU

    @property
    def calls(self) -> int:
        return int(self.report.get("count", 0))

    @property
    def ok(self) -> int:
        return int(self.report.get("statusCodeDistribution", {}).get("OK", 0))

    @property
    def calls_per_s(self) -> float:
        return float(self.report.get("rps", 0.0))

    def percentile_ms(self, p: int) -> float:
        for entry in self.report.get("latencyDistribution") or []:
            if int(entry["percentage"]) == p:
                return float(entry["latency"]) / 1e6  # nanoseconds
        return float("nan")


def run_ghz(
    binary: str,
    *,
    proto: Path,
    target: str,
    token: str,
    tool: str,
    arguments_b64: str,
    calls: int,
    concurrency: int,
    timeout_s: float,
) -> GhzRun:
    """``calls`` Invoke RPCs at ``concurrency``; the JSON report plus ghz's CPU (rusage)."""
    payload = {"call_id": "{{.RequestNumber}}", "tool": tool, "arguments": arguments_b64}
    with tempfile.NamedTemporaryFile("w+", suffix=".json") as out:
        args = [
            binary,
            "--insecure",
            "--proto",
            str(proto),
            "--import-paths",
            str(proto.parent),
            "--call",
            "dispatch.v1.Dispatcher/Invoke",
            "--data",
            json.dumps(payload),
            "--metadata",
            json.dumps({"authorization": f"Bearer {token}"}),
            "--total",
            str(calls),
            "--concurrency",
            str(concurrency),
            "--connections",
            "1",
            "--timeout",
            "10s",
            "--format",
            "json",
            "--output",
            out.name,
            target,
        ]
        before = _children_cpu()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=5)
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"ghz failed ({proc.returncode}): {stderr.decode()[-2000:]}")
        # ghz has been reaped, so its CPU is in the rusage of our waited-for children.
        cpu = _children_cpu() - before
        report = json.loads(Path(out.name).read_text())
    return GhzRun(report=report, cpu_s=cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
