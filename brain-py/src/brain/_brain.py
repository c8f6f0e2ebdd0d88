"""``Brain``: the long-lived objects of one brain process, started and stopped together.

::

    Brain
    ├── client    SidecarClient (one Dispatch stream for every run's tool calls)
    ├── planner   openai | local | router (shared by every run)
    ├── catalog   the sidecar's tools (ListTools), refreshed in the background
    ├── runs      RunManager: admission, records, drain
    └── metrics   BrainMetrics (its own Prometheus registry)

The HTTP API keeps one ``Brain`` on ``app.state.brain`` (``_api/``); ``brain run`` uses one
directly.
Ready (``/readyz``) means: a Dispatch stream to the sidecar is open, the tool list is
loaded, and the planner's model is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from ._agent import Agent, AgentOptions
from ._backoff import Backoff
from ._catalog import ToolCatalog
from ._client import SidecarClient
from ._exceptions import BrainError
from ._metrics import BrainMetrics
from ._planners.base import Planner
from ._runs.manager import DrainReport, RunManager, RunManagerOptions

__all__ = ["Brain", "BrainOptions"]

log = logging.getLogger("brain.service")


@dataclass(frozen=True, kw_only=True, slots=True)
class BrainOptions:
    runs: RunManagerOptions = field(default_factory=RunManagerOptions)
    agent: AgentOptions = field(default_factory=AgentOptions)
    #: How often the tool list is fetched again from the sidecar, in seconds.
    tools_refresh_s: float = 60.0


class Brain:
    """Client, planner, tool catalog, run manager and metrics of one process."""

    def __init__(
        self,
        client: SidecarClient,
        planner: Planner,
        *,
        metrics: BrainMetrics | None = None,
        options: BrainOptions | None = None,
    ) -> None:
        self.client = client
        self.planner = planner
        self.metrics = metrics or BrainMetrics()
        self.options = options or BrainOptions()
        self.catalog = ToolCatalog(client.list_tools, hidden=planner.reserved_tools)
        self.agent = Agent(client, planner, self.metrics, options=self.options.agent)
        self.runs = RunManager(self.agent, self.catalog, self.metrics, options=self.options.runs)
        self._refresher: asyncio.Task[None] | None = None
        self._planner_task: asyncio.Task[None] | None = None
        self.planner_error: BaseException | None = None

    async def start(self) -> None:
        """Connect, load the planner's model and the tool list in the background.

        Returns at once; :attr:`ready` turns true when all three are done. Use
        :meth:`wait_ready` to block until then.
        """
        await self.client.start()
        self._planner_task = asyncio.create_task(self._start_planner(), name="planner-start")
        self._refresher = asyncio.create_task(self._refresh_tools(), name="tools-refresh")

    async def _start_planner(self) -> None:
        try:
            await self.planner.start()
        except Exception as exc:
            self.planner_error = exc
            log.exception("the planner failed to start planner=%s", self.planner.name)

    async def planner_started(self) -> BaseException | None:
        """Wait for the planner's start; its exception if it failed, else ``None``."""
        if self._planner_task is not None:
            await asyncio.shield(self._planner_task)
        return self.planner_error

    async def _refresh_tools(self) -> None:
        backoff = Backoff(0.1, 10.0)
        while True:
            try:
                tools = await self.catalog.refresh()
            except BrainError as exc:
                delay = backoff.next_delay()
                log.warning("cannot list the sidecar's tools yet: %s (retry in %.1fs)", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            log.info("tools loaded count=%d names=%s", len(tools), ",".join(t.name for t in tools))
            await asyncio.sleep(self.options.tools_refresh_s)

    @property
    def ready(self) -> bool:
        return self.client.connected and self.catalog.loaded and self.planner.ready

    def readiness(self) -> dict[str, bool]:
        return {
            "sidecar_connected": self.client.connected,
            "tools_loaded": self.catalog.loaded,
            "planner_ready": self.planner.ready,
            "draining": self.runs.draining,
        }

    async def wait_ready(self, timeout: float) -> None:
        """Wait until ready; raise :class:`BrainError` saying what is missing if not."""
        try:
            async with asyncio.timeout(timeout):
                while not self.ready:
                    if self.planner_error is not None:
                        raise BrainError(f"the planner failed to start: {self.planner_error!r}")
                    await asyncio.sleep(0.05)
        except TimeoutError as exc:
            missing = [k for k, v in self.readiness().items() if not v and k != "draining"]
            raise BrainError(
                f"not ready after {timeout}s: waiting for {', '.join(missing)}"
            ) from exc

    async def drain(self, timeout: float) -> DrainReport:
        """Stop admitting runs; let those in flight finish within ``timeout``, cancel the rest."""
        return await self.runs.drain(timeout)

    async def aclose(self) -> None:
        await self.runs.aclose()
        for task in (self._refresher, self._planner_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.planner.aclose()
        await self.client.aclose()
