"""One measurement: start what a dispatcher needs, run the agent process, read ``/proc``.

Roles whose CPU and memory are reported separately:

* ``brain``: the agent process (agents + dispatcher; for tandem, the ``SidecarClient``);
* ``sidecar``: the sidecar (tandem only), started fresh for each measurement so that its
  peak RSS belongs to this measurement;
* ``upstream``: nginx, master and workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import procstat
from .nginx import Nginx
from .tools import sidecar_config

BENCH_DIR = Path(__file__).resolve().parents[1]
REPO = BENCH_DIR.parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness import SidecarProcess  # noqa: E402

#: The event loop each dispatcher's agent process runs (naive: the default loop).
LOOPS = {"python-naive": "asyncio"}


@dataclass
class Measurement:
    """What one run of the agent process measured."""

    dispatcher: str
    calls: int
    window_s: float
    statuses: dict[str, int]
    latency: dict[str, float]
    cpu_s: dict[str, float]
    peak_rss: dict[str, int]
    counters: dict[str, float] = field(default_factory=dict)
    #: Highest sampled sum of brain + sidecar RSS during the window.
    peak_rss_sum: int = 0
    #: CPU seconds used during the window by processes that are not part of the measurement
    #: (another job on a shared machine); divide by ``window_s`` for cores.
    other_cpu_s: float = 0.0
    #: Mode-specific facts (memory mode: calls in flight, seconds until all were).
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.statuses.get("OK", 0)

    @property
    def errors(self) -> int:
        return self.calls - self.ok

    @property
    def other_cores(self) -> float:
        """Average cores used by processes outside the measurement during the window."""
        return self.other_cpu_s / self.window_s if self.window_s else 0.0

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.window_s if self.window_s else 0.0

    def cpu_per_1k(self) -> dict[str, float]:
        """CPU seconds per 1,000 calls, by role."""
        if not self.calls:
            return {role: float("nan") for role in self.cpu_s}
        return {role: cpu * 1000 / self.calls for role, cpu in self.cpu_s.items()}

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["calls_per_s"] = self.calls_per_s
        out["cpu_s_per_1k_calls"] = self.cpu_per_1k()
        return out


class AgentProcess:
    """``python -m benchlib.agents`` with its JSON-lines events read on a thread."""

    def __init__(self, config: dict[str, Any]) -> None:
        env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchlib.agents", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=BENCH_DIR,
        )
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._events.put(json.loads(line))
        self._events.put(None)

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event, which must be ``event``, within ``timeout`` seconds."""
        try:
            got = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"agent process: no {event!r} within {timeout:.0f}s") from None
        if got is None:
            code = self.proc.wait(10)
            raise RuntimeError(f"agent process exited ({code}) before {event!r}")
        if got.get("event") != event:
            raise RuntimeError(f"agent process: expected {event!r}, got {got}")
        return got

    def poll_event(self) -> dict[str, Any] | None:
        with contextlib.suppress(queue.Empty):
            return self._events.get_nowait()
        return None

    def send_line(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 10.0) -> None:
        """Close stdin (the process then exits); kill it if it does not."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def sidecar_for(nginx: Nginx, binary: Path) -> Iterator[SidecarProcess]:
    """A fresh sidecar with the benchmark's tools, on a unix socket (and token TCP)."""
    # Binary and log level go to this process only: the smoke test runs inside the
    # cross-language suite, whose other tests must keep their own SIDECAR_BIN.
    log = {"RUST_LOG": os.environ.get("RUST_LOG", "warn,sidecar=info")}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-sidecar-") as tmp:
        sidecar = SidecarProcess(Path(tmp), sidecar_config(nginx.base_url), env=log, binary=binary)
        sidecar.start(timeout=30)
        try:
            yield sidecar
        finally:
            try:
                sidecar.terminate(timeout=15)
            except subprocess.TimeoutExpired:
                sidecar.kill()


def _cpu(roles: dict[str, int]) -> dict[str, float]:
    return {role: procstat.tree_cpu_seconds([pid]) for role, pid in roles.items()}


def measure(
    config: dict[str, Any],
    *,
    nginx: Nginx,
    sidecar: SidecarProcess | None,
    timeout: float,
) -> Measurement:
    """Run the agent process once with ``config`` (see :mod:`benchlib.agents`)."""
    dispatcher = config["dispatcher"]
    config = {
        "loop": LOOPS.get(dispatcher, "uvloop"),
        "upstream": nginx.base_url,
        "sidecar": sidecar.unix_target if sidecar else "",
        "deadline_s": timeout,
        **config,
    }
    deadline = time.monotonic() + timeout + 15
    agents = AgentProcess(config)
    try:
        roles = {"brain": agents.pid, "upstream": nginx.pid}
        if sidecar is not None:
            assert sidecar.proc is not None
            roles["sidecar"] = sidecar.proc.pid
        agents.wait_for("ready", 60)
        agents.wait_for("window-start", max(1.0, deadline - time.monotonic()))
        before = _cpu(roles)
        busy_before = procstat.machine_busy_seconds() - procstat.cpu_seconds(os.getpid())
        hold = (
            _Hold(
                nginx,
                config["agents"],
                config.get("hold_s", 2.0),
                config.get("hold_deadline_s", 60.0),
            )
            if config["mode"] == "memory"
            else None
        )
        end, peak_sum = _sample_until_event(agents, roles, deadline, hold)
        after = _cpu(roles)
        busy = procstat.machine_busy_seconds() - procstat.cpu_seconds(os.getpid()) - busy_before
        result = agents.wait_for("result", max(1.0, deadline - time.monotonic()))
        peak = {role: procstat.peak_rss_bytes(pid) for role, pid in roles.items()}
        peak.pop("upstream", None)
    finally:
        agents.close()
    return Measurement(
        dispatcher=dispatcher,
        calls=int(result["calls"]),
        window_s=float(result["window_s"]),
        statuses={str(k): int(v) for k, v in result["statuses"].items()},
        latency={str(k): float(v) for k, v in result["latency"].items()},
        cpu_s={role: after[role] - before[role] for role in roles},
        peak_rss=peak,
        counters={str(k): float(v) for k, v in result["counters"].items()},
        peak_rss_sum=peak_sum,
        other_cpu_s=max(0.0, busy - sum(after[r] - before[r] for r in roles)),
        extra=(hold.facts(end) if hold else {}),
    )


class _Hold:
    """Memory mode: tell the agents to stop once the upstream has been answering all of
    their calls for ``hold_s`` (or ``give_up_s`` after the start, whichever first)."""

    def __init__(self, nginx: Nginx, calls: int, hold_s: float, give_up_s: float) -> None:
        self.nginx = nginx
        self.calls = calls
        self.hold_s = hold_s
        self.started = time.monotonic()
        self.give_up = self.started + give_up_s
        self.all_in_flight_at: float | None = None
        self.upstream_max = 0
        self.sent = False

    def should_stop(self) -> bool:
        now = time.monotonic()
        seen = self.nginx.requests_in_flight()
        self.upstream_max = max(self.upstream_max, seen)
        if self.all_in_flight_at is None and seen >= self.calls:
            self.all_in_flight_at = now
        if self.all_in_flight_at is not None:
            return now >= self.all_in_flight_at + self.hold_s
        return now >= self.give_up

    def facts(self, end: dict[str, Any]) -> dict[str, float]:
        reached = self.all_in_flight_at
        return {
            "in_flight_at_stop": float(end.get("in_flight", 0)),
            "upstream_max_in_flight": float(self.upstream_max),
            "seconds_to_all_in_flight": (reached - self.started) if reached else float("nan"),
        }


def _sample_until_event(
    agents: AgentProcess, roles: dict[str, int], deadline: float, hold: _Hold | None
) -> tuple[dict[str, Any], int]:
    """Wait for ``window-end`` while sampling the RSS of brain + sidecar every 50 ms."""
    pids = [pid for role, pid in roles.items() if role != "upstream"]
    peak = 0
    while True:
        event = agents.poll_event()
        if event is not None:
            if event.get("event") != "window-end":
                raise RuntimeError(f"agent process: expected 'window-end', got {event}")
            return event, peak
        if hold is not None and not hold.sent and hold.should_stop():
            hold.sent = True
            agents.send_line("stop")
        if agents.proc.poll() is not None:
            raise RuntimeError(f"agent process exited ({agents.proc.returncode}) mid-window")
        if time.monotonic() > deadline:
            raise TimeoutError("agent process: no 'window-end' before the deadline")
        peak = max(peak, sum(procstat.rss_bytes(pid) for pid in pids))
        time.sleep(0.05)
