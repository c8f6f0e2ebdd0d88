"""One measurement: start what a dispatcher needs, run the agent process, read ``/proc``.

Roles whose CPU and memory are reported separately:

* ``brain``: the agent process (agents + dispatcher; for tandem, the ``SidecarClient``),
  or the sum over the agent processes of a ``processes: N`` measurement (``python-tuned
  xN``: one process per core, the agents split between them, each pinned to its core
  with ``taskset -c`` when ``pin`` is set);
* ``sidecar``: the sidecar (tandem only), started fresh for each measurement so that its
  peak RSS belongs to this measurement;
* ``upstream``: nginx, master and workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
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
from .stats import summarize_ms
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
    #: RSS by role when every process was ready, before any call (the idle baseline).
    ready_rss: dict[str, int] = field(default_factory=dict)
    #: Agent processes that shared the measurement (``python-tuned xN``: N).
    processes: int = 1

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

    def __init__(self, config: dict[str, Any], *, cpu: int | None = None) -> None:
        # Keep the caller's PYTHONPATH after ours: a worktree measures its own brain
        # (``PYTHONPATH=brain-py/src``) rather than the venv's editable install.
        path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        command = [sys.executable, "-m", "benchlib.agents", json.dumps(config)]
        if cpu is not None:
            # `taskset -c CPU` execs the agent process on that core alone (the pid stays
            # the Python process's); it is util-linux, present wherever nginx runs.
            command = ["taskset", "-c", str(cpu), *command]
        self.proc = subprocess.Popen(
            command,
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


def built_sidecar() -> Path | None:
    """This tree's sidecar binary, release build first, if one is built."""
    for profile in ("release", "debug"):
        path = REPO / f"sidecar-rs/target/{profile}/sidecar"
        if path.exists():
            return path
    return None


@contextlib.contextmanager
def sidecar_for(
    nginx: Nginx, binary: Path, *, start_timeout: float = 30.0
) -> Iterator[SidecarProcess]:
    """A fresh sidecar with the benchmark's tools, on a unix socket (and token TCP)."""
    # Binary and log level go to this process only: the smoke test runs inside the
    # cross-language suite, whose other tests must keep their own SIDECAR_BIN.
    log = {"RUST_LOG": os.environ.get("RUST_LOG", "warn,sidecar=info")}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-sidecar-") as tmp:
        sidecar = SidecarProcess(
            Path(tmp),
            sidecar_config(nginx.base_url, h2_base_url=nginx.h2_base_url),
            env=log,
            binary=binary,
        )
        sidecar.start(timeout=start_timeout)
        try:
            yield sidecar
        finally:
            try:
                sidecar.terminate(timeout=15)
            except subprocess.TimeoutExpired:
                sidecar.kill()


def _cpu(roles: dict[str, list[int]]) -> dict[str, float]:
    return {role: procstat.tree_cpu_seconds(pids) for role, pids in roles.items()}


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal whole shares (the first ones larger)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _share(config: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    """Process ``i`` of ``n``'s part of ``config``: its agents, calls and concurrency."""
    if n == 1:
        return config
    part = dict(config, wait_go=True, raw_latencies=True)
    for key in ("agents", "calls", "warmup_calls", "concurrency"):
        if key in config:
            part[key] = split(int(config[key]), n)[i]
    if "concurrency" in part:
        # A process with calls to make needs a worker to make them.
        part["concurrency"] = max(1, part["concurrency"])
    return part


def open_files_to_the_limit() -> None:
    """Raises this process's open-file limit (inherited by what it starts) to the hard
    one: 10,000 calls in flight need 10,000+ sockets in each process."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cores() -> list[int]:
    """The CPUs this process may run on (what ``taskset`` pins to)."""
    return sorted(os.sched_getaffinity(0))


def measure(
    config: dict[str, Any],
    *,
    nginx: Nginx,
    sidecar: SidecarProcess | None,
    timeout: float,
) -> Measurement:
    """Run the agent process(es) once with ``config`` (see :mod:`benchlib.agents`).

    ``config["processes"]`` (default 1) agent processes share the load; with
    ``config["pin"]`` process ``i`` runs on core ``i`` (mod the cores there are).
    """
    dispatcher = config["dispatcher"]
    n = int(config.get("processes", 1))
    config = {
        "loop": LOOPS.get(dispatcher, "uvloop"),
        "upstream": nginx.base_url,
        "sidecar": sidecar.unix_target if sidecar else "",
        "frames": str(sidecar.frames_socket) if sidecar else "",
        "deadline_s": timeout,
        **config,
    }
    deadline = time.monotonic() + timeout + 15
    pins = cores()
    group: list[AgentProcess] = []
    try:
        for i in range(n):
            cpu = pins[i % len(pins)] if config.get("pin") else None
            group.append(AgentProcess(_share(config, i, n), cpu=cpu))
        roles = {"upstream": [nginx.pid], "brain": [a.pid for a in group]}
        if sidecar is not None:
            assert sidecar.proc is not None
            roles["sidecar"] = [sidecar.proc.pid]
        for agents in group:
            agents.wait_for("ready", 60)
        ready_rss = _rss(roles)
        if n > 1:
            for agents in group:
                agents.send_line("go")
        for agents in group:
            agents.wait_for("window-start", max(1.0, deadline - time.monotonic()))
        before = _cpu(roles)
        busy_before = procstat.machine_busy_seconds() - procstat.cpu_seconds(os.getpid())
        total_agents = int(config.get("agents", 0))
        hold = (
            _Hold(
                nginx,
                total_agents,
                config.get("hold_s", 2.0),
                config.get("hold_deadline_s", 60.0),
                config.get("cancel_deadline_s", 60.0),
            )
            if config["mode"] == "memory"
            else None
        )
        ends, peak_sum, deadline = _sample_until_event(group, roles, deadline, hold)
        after = _cpu(roles)
        busy = procstat.machine_busy_seconds() - procstat.cpu_seconds(os.getpid()) - busy_before
        results = [
            agents.wait_for("result", max(1.0, deadline - time.monotonic())) for agents in group
        ]
        peak = {
            role: sum(procstat.peak_rss_bytes(pid) for pid in pids)
            for role, pids in roles.items()
            if role != "upstream"
        }
    finally:
        for agents in group:
            agents.close()
    statuses: dict[str, int] = {}
    counters: dict[str, float] = {}
    for result in results:
        for k, v in result["statuses"].items():
            statuses[str(k)] = statuses.get(str(k), 0) + int(v)
        for k, v in result["counters"].items():
            counters[str(k)] = counters.get(str(k), 0.0) + float(v)
    if n == 1:
        latency = {str(k): float(v) for k, v in results[0]["latency"].items()}
    else:
        latency = summarize_ms([x for r in results for x in r["latencies_s"]])
    end = {
        "in_flight": sum(int(e.get("in_flight", 0)) for e in ends),
        "cancel_s": max((float(e.get("cancel_s", 0.0)) for e in ends), default=0.0),
    }
    return Measurement(
        dispatcher=dispatcher,
        calls=sum(int(r["calls"]) for r in results),
        # The windows start together (``go``); the longest one covers them all.
        window_s=max(float(r["window_s"]) for r in results),
        statuses=statuses,
        latency=latency,
        cpu_s={role: after[role] - before[role] for role in roles},
        peak_rss=peak,
        counters=counters,
        peak_rss_sum=peak_sum,
        other_cpu_s=max(0.0, busy - sum(after[r] - before[r] for r in roles)),
        extra=(hold.facts(end) if hold else {}),
        ready_rss=ready_rss,
        processes=n,
    )


def _rss(roles: dict[str, list[int]]) -> dict[str, int]:
    return {
        role: sum(procstat.rss_bytes(pid) for pid in pids)
        for role, pids in roles.items()
        if role != "upstream"
    }


class _Hold:
    """Memory mode: tell the agents to stop once the upstream has been answering all of
    their calls for ``hold_s`` (or ``give_up_s`` after the start, whichever first); they
    then have ``cancel_s`` to cancel them all."""

    def __init__(
        self, nginx: Nginx, calls: int, hold_s: float, give_up_s: float, cancel_s: float
    ) -> None:
        self.nginx = nginx
        self.calls = calls
        self.hold_s = hold_s
        self.cancel_s = cancel_s
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
            "seconds_to_cancel": float(end.get("cancel_s", float("nan"))),
        }


def _sample_until_event(
    group: list[AgentProcess], roles: dict[str, list[int]], deadline: float, hold: _Hold | None
) -> tuple[list[dict[str, Any]], int, float]:
    """Wait for every process's ``window-end`` while sampling the RSS of brain(s) + sidecar
    every 50 ms. Returns the events, the peak RSS sum and the deadline (later when a memory
    run's cancelling got its own budget)."""
    pids = [pid for role, role_pids in roles.items() if role != "upstream" for pid in role_pids]
    peak = 0
    ends: dict[int, dict[str, Any]] = {}
    while True:
        for i, agents in enumerate(group):
            if i in ends:
                continue
            event = agents.poll_event()
            if event is not None:
                if event.get("event") != "window-end":
                    raise RuntimeError(f"agent process: expected 'window-end', got {event}")
                ends[i] = event
        if len(ends) == len(group):
            return [ends[i] for i in range(len(group))], peak, deadline
        if hold is not None and not hold.sent and hold.should_stop():
            hold.sent = True
            for agents in group:
                agents.send_line("stop")
            # Cancelling the calls has a budget of its own, whenever the stop came.
            deadline = max(deadline, time.monotonic() + hold.cancel_s)
        for agents in group:
            if agents.proc.poll() is not None:
                raise RuntimeError(f"agent process exited ({agents.proc.returncode}) mid-window")
        if time.monotonic() > deadline:
            raise TimeoutError("agent process: no 'window-end' before the deadline")
        peak = max(peak, sum(procstat.rss_bytes(pid) for pid in pids))
        time.sleep(0.05)
