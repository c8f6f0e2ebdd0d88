"""Many runs in one event loop: 5,000 at once, every one accounted for.

Each run plans twice with a stub planner that takes 50 ms per step (standing in for an
LLM's latency) and makes one real tool call through the real sidecar in between; the
sidecar lets 64 of them reach the upstream at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from brain import SidecarClient
from brain._agent import Agent
from brain._catalog import ToolCatalog
from brain._metrics import BrainMetrics
from brain._runs.manager import RunManager, RunManagerOptions
from brain._runs.record import RunSpec

from brain_harness import StubPlanner, tools_config
from harness import SidecarProcess, Upstream

Start = Callable[..., SidecarProcess]

RUNS = 5_000


async def test_5000_concurrent_runs_are_all_accounted_for(
    upstream: Upstream, start_sidecar: Start
) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response({"got": await request.json()})

    upstream.route("POST", "/echo", echo)
    # At most 64 upstream requests at once (the rest wait in the sidecar): a realistic
    # bound, and it keeps the upstream's connection count small.
    pooled = {
        "name": "pooled_echo",
        "description": "Echo, 64 at a time.",
        "input_schema": {"type": "object"},
        "request": {"method": "POST", "url": f"{upstream.url}/echo"},
        "max_concurrency": 64,
    }
    sidecar = start_sidecar(tools_config(upstream.url, extra=[pooled]))
    metrics = BrainMetrics()
    async with SidecarClient(sidecar.unix_target) as client:
        await client.wait_connected(15)
        catalog = ToolCatalog(client.list_tools)
        await catalog.refresh()
        agent = Agent(client, StubPlanner(latency=0.05), metrics)
        runs = RunManager(agent, catalog, metrics, options=RunManagerOptions(max_in_flight=RUNS))
        started = time.perf_counter()
        submitted = [
            runs.submit(RunSpec(task="call:pooled_echo", deadline_s=120)) for _ in range(RUNS)
        ]
        peak = runs.in_flight
        done = await asyncio.wait_for(asyncio.gather(*(r.wait() for r in submitted)), timeout=120)
        elapsed = time.perf_counter() - started
    print(f"{RUNS} concurrent runs finished in {elapsed:.2f}s")
    assert all(done)
    assert peak == RUNS
    states = Counter(r.state.value for r in submitted)
    assert states == {"succeeded": RUNS}, states
    assert len({r.id for r in submitted}) == RUNS
    assert all(r.answer == "pooled_echo: ok" for r in submitted)
    assert runs.in_flight == 0
    assert upstream.requests["/echo"] == RUNS
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    assert samples[("brain_runs_total", ("succeeded",))] == RUNS
    assert samples[("brain_runs_in_flight", ())] == 0
    assert samples[("brain_tool_calls_total", ("ok",))] == RUNS
    assert samples[("brain_run_duration_seconds_count", ())] == RUNS
