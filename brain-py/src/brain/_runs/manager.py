"""``RunManager``: admission, the registry of runs, cancellation and the drain.

* **Bounded admission.** At most ``max_in_flight`` runs are pending or running; one more
  is refused with :class:`~brain.AdmissionRefused` (the API answers 429 with
  ``Retry-After``). While draining every new run is refused (503).
* **Bounded history.** Finished runs stay readable (``GET /v1/runs/{id}``) until
  ``max_retained`` newer finished runs push them out, oldest first.
* **Drain.** :meth:`RunManager.drain` stops admitting, lets runs in flight finish for up
  to ``timeout`` seconds, then cancels the rest (state ``cancelled``, reason
  ``shutdown``) and waits for them to record it. It says how many of each there were.

Each run is a :class:`~brain._runs.record.Run` (``record.py``), driven to its end by the
:class:`~brain._agent.Agent` with the tools the :class:`~brain._catalog.ToolCatalog`
allows it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from dataclasses import dataclass

from .._agent import Agent
from .._catalog import ToolCatalog
from .._exceptions import AdmissionRefused, RunNotFound
from .._metrics import BrainMetrics
from .._types import ToolInfo
from .record import Run, RunSpec, RunState

__all__ = ["DrainReport", "RunManager", "RunManagerOptions"]

log = logging.getLogger("brain.runs")


@dataclass(frozen=True, kw_only=True, slots=True)
class RunManagerOptions:
    #: Runs pending or running at once; more are refused (HTTP 429).
    max_in_flight: int = 10_000
    #: Finished runs kept for ``GET /v1/runs/{id}``.
    max_retained: int = 10_000
    #: ``Retry-After`` (seconds) suggested to a refused client.
    retry_after_s: int = 1


@dataclass(frozen=True, slots=True)
class DrainReport:
    finished: int
    cancelled: int
    seconds: float


class RunManager:
    """Admits runs, runs each as a task with the :class:`~brain._agent.Agent`, keeps records."""

    def __init__(
        self,
        agent: Agent,
        catalog: ToolCatalog,
        metrics: BrainMetrics,
        *,
        options: RunManagerOptions | None = None,
    ) -> None:
        self.agent = agent
        self.catalog = catalog
        self.metrics = metrics
        self.options = options or RunManagerOptions()
        self._active: dict[str, Run] = {}
        self._finished: collections.OrderedDict[str, Run] = collections.OrderedDict()
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def draining(self) -> bool:
        return self._draining

    def submit(self, spec: RunSpec) -> Run:
        """Admit a run and start it; raises :class:`AdmissionRefused` when over the bound."""
        if self._draining:
            self.metrics.runs_rejected.labels("draining").inc()
            raise AdmissionRefused(
                "the brain is shutting down; submit the run elsewhere",
                retry_after_s=self.options.retry_after_s,
                draining=True,
            )
        if len(self._active) >= self.options.max_in_flight:
            self.metrics.runs_rejected.labels("limit").inc()
            raise AdmissionRefused(
                f"{len(self._active)} runs in flight, the limit of this process",
                retry_after_s=self.options.retry_after_s,
            )
        run = Run(spec)
        tools = self.catalog.select(spec.tools)
        self._active[run.id] = run
        self._idle.clear()
        self.metrics.runs_in_flight.inc()
        started = time.monotonic()
        run.task = asyncio.create_task(self._drive(run, tools, started), name=f"run-{run.id}")
        # Also a done callback: a task cancelled before its first step never runs any of
        # its code (not even a `finally`), and its run must still be accounted for.
        run.task.add_done_callback(functools.partial(self._on_done, run, started))
        return run

    async def _drive(self, run: Run, tools: list[ToolInfo], started: float) -> None:
        try:
            await self.agent.run(run, tools)
        finally:
            # At once, so that whoever saw the run finish also sees it out of the count.
            self._account(run, started)

    def _on_done(self, run: Run, started: float, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("run task failed run_id=%s", run.id, exc_info=task.exception())
        if not run.finished:  # cancelled before it started, or a bug in the agent
            reason = run.cancel_reason or "cancelled"
            if task.cancelled():
                run.finish(RunState.CANCELLED, reason, error=f"run cancelled ({reason})")
            else:
                run.finish(RunState.FAILED, "internal_error", error=repr(task.exception()))
        self._account(run, started)

    def _account(self, run: Run, started: float) -> None:
        """Take a finished run out of the in-flight set and count it (once)."""
        if self._active.pop(run.id, None) is None:
            return
        if not run.finished:
            run.finish(RunState.FAILED, "internal_error", error="the run ended without a state")
        seconds = time.monotonic() - started
        self.metrics.runs_in_flight.dec()
        self.metrics.runs.labels(run.state.value).inc()
        self.metrics.run_duration.observe(seconds)
        self._retain(run)
        if not self._active:
            self._idle.set()
        log.info(
            "run finished run_id=%s state=%s reason=%s steps=%d tool_calls=%d seconds=%.3f",
            run.id,
            run.state.value,
            run.stop_reason,
            run.steps,
            run.tool_calls,
            seconds,
        )

    def _retain(self, run: Run) -> None:
        self._finished[run.id] = run
        while len(self._finished) > self.options.max_retained:
            self._finished.popitem(last=False)

    def get(self, run_id: str) -> Run:
        run = self._active.get(run_id) or self._finished.get(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r}")
        return run

    def cancel(self, run_id: str, reason: str = "cancelled") -> Run:
        """Ask the run to stop; its tool calls in flight are cancelled in the sidecar."""
        run = self.get(run_id)
        run.request_cancel(reason)
        return run

    async def drain(self, timeout: float) -> DrainReport:
        """Stop admitting; wait up to ``timeout`` for runs in flight, then cancel the rest."""
        self._draining = True
        started = time.monotonic()
        at_start = len(self._active)
        log.info("draining runs_in_flight=%d timeout=%.1fs", at_start, timeout)
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            pass
        left = list(self._active.values())
        if left:
            log.warning("drain timeout passed; cancelling runs=%d", len(left))
        for run in left:
            run.request_cancel("shutdown")
        tasks = [run.task for run in left if run.task is not None]
        if tasks:
            # Cancelled runs only record their state; a few seconds is plenty.
            await asyncio.wait(tasks, timeout=10)
        return DrainReport(at_start - len(left), len(left), time.monotonic() - started)

    async def aclose(self) -> None:
        """Cancel everything at once (tests and errors; servers use :meth:`drain`)."""
        await self.drain(0)
