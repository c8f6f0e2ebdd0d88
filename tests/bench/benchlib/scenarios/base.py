"""What a scenario receives (:class:`Context`) and returns (:class:`ScenarioResult`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..nginx import Nginx
from ..runner import Measurement, measure, sidecar_for


@dataclass
class Target:
    """A goal from issue 7 and whether this run met it."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: could not be measured in this run
    why: str = ""


@dataclass
class ScenarioResult:
    """A scenario's table (``columns`` name the keys of each row), targets and notes."""

    key: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Everything else worth keeping in the JSON (e.g. every ramp step).
    detail: dict[str, Any] = field(default_factory=dict)
    charts: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Shared by every scenario of one ``make bench`` run."""

    quick: bool
    nginx: Nginx
    sidecar_bin: Path
    results_dir: Path
    repo: Path
    log: Callable[[str], None] = lambda line: print(line, flush=True)
    #: Pin each process of python-tuned xN to its own core (``taskset -c``).
    pin: bool = True

    def run(self, config: dict[str, Any], *, timeout: float) -> Measurement:
        """One measurement; tandem dispatchers get a fresh sidecar of their own."""
        if config["dispatcher"].startswith("tandem"):
            with sidecar_for(self.nginx, self.sidecar_bin) as sidecar:
                return measure(config, nginx=self.nginx, sidecar=sidecar, timeout=timeout)
        return measure(config, nginx=self.nginx, sidecar=None, timeout=timeout)


def us(seconds_per_1k: float) -> float:
    """CPU seconds per 1,000 calls as microseconds per call."""
    return seconds_per_1k * 1000


def mib(n: int | float) -> float:
    return n / (1024 * 1024)
