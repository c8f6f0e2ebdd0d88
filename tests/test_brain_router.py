"""The default stack of `make run`: demo tool service + sidecar + brain API with the router.

The router planner runs the real bundled embedding model; concurrent runs share its
batches; every tool call goes through the sidecar to the real demo tools.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from importlib import resources

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from brain._embedding import SentenceEmbedder
from brain._metrics import BrainMetrics
from brain._planners.router import RouterPlanner
from demo_tools.config import local_tools_yaml

from brain_harness import BrainServer
from harness import SidecarProcess

Start = Callable[..., SidecarProcess]

TASKS = {
    "How many litres are 2 gallons?": "result=7.57082",
    "What is (17.5 * 4) / 3?": "value=23.333",
    "Is it warmer in Cairo or Tokyo?": "city=Tokyo",
    "What time is it in JST?": "utc_offset=+09:00",
    "Find articles about circuit breakers.": "The circuit breaker pattern",
}


async def test_router_runs_the_demo_tasks_end_to_end(demo_tools: str, start_sidecar: Start) -> None:
    config = resources.files("demo_tools").joinpath("tools.yaml").read_text()
    sidecar = start_sidecar(
        local_tools_yaml(
            config,
            replace={
                "http://127.0.0.1:8081": demo_tools,
                "scope: tool,": "key: tool,",
                "scope: agent_tool": "key: agent",
            },
        )
    )
    metrics = BrainMetrics()
    embedder = SentenceEmbedder(metrics=metrics.batcher)
    async with (
        BrainServer(
            sidecar.unix_target, lambda _: RouterPlanner(embedder), metrics=metrics
        ) as server,
        aiohttp.ClientSession() as http,
    ):

        async def run(task: str) -> dict[str, object]:
            async with http.post(f"{server.url}/v1/runs?wait=true", json={"task": task}) as r:
                assert r.status == 200
                body: dict[str, object] = await r.json()
                return body

        started = time.perf_counter()
        runs = await asyncio.gather(*(run(task) for task in TASKS for _ in range(4)))
        print(f"{len(runs)} router runs in {time.perf_counter() - started:.2f}s")
        async with http.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
    for run in runs:
        assert run["state"] == "succeeded", run
        expected = TASKS[str(run["task"])]
        assert expected in str(run["answer"]), run["answer"]
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    items = samples[("brain_batch_size_sum", ("embedding",))]
    batches = samples[("brain_batch_size_count", ("embedding",))]
    assert items >= len(runs)
    assert items / batches > 1.5, "concurrent runs did not share embedding batches"
    assert samples[("brain_planner_duration_seconds_count", ("router",))] == 2 * len(runs)
