"""The agent process (the "brain" of every dispatcher): ``python -m benchlib.agents CONFIG``.

It hosts the agents and one dispatcher, and talks to the orchestrator in JSON lines on
stdout: ``ready``, then ``window-start`` / ``window-end`` around the measured part (the
orchestrator reads CPU counters at those moments), then ``result``. It then waits for
stdin to close, so the orchestrator can read its peak RSS before it exits. Every mode is
bounded by ``deadline_s``.

Several agent processes can share one measurement (``python-tuned xN``): each then waits
for a ``go`` line on stdin after ``ready`` (``wait_go``), so their windows start together,
and reports every latency (``raw_latencies``) for the orchestrator to merge.

Modes:

* ``think``: ``agents`` agents, each: think ``think_ms`` (times 1 ± ``think_jitter``,
  uniform), make one call, repeat (start times spread over one think time). Scenario 1.
* ``burst``: ``concurrency`` workers make ``calls`` calls back to back (after
  ``warmup_calls`` unmeasured ones). Scenarios 2, 4, 5.
* ``memory``: ``agents`` agents make one call each, all at once, held in flight until the
  orchestrator writes ``stop``. Scenario 3.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from brain._gc import tune_gc
from brain._malloc import tune_malloc

from .dispatchers import Dispatcher, make_dispatcher
from .stats import summarize_ms
from .tools import BY_NAME, arguments_for

Emit = Callable[..., None]


@dataclass
class Recorder:
    """Latencies and statuses of the calls that finish while ``on``."""

    on: bool = False
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, seconds: float, status: str) -> None:
        if self.on:
            self.latencies.append(seconds)
            self.statuses[status] += 1


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _timed_call(
    d: Dispatcher, cfg: dict[str, Any], i: int, agent: int, rec: Recorder
) -> None:
    tool = cfg["tool"]
    started = time.perf_counter()
    outcome = await d.call(
        tool, arguments_for(tool, i), agent_id=f"agent-{agent}", select=cfg.get("select", ())
    )
    rec.add(time.perf_counter() - started, outcome.status)


async def think_mode(d: Dispatcher, cfg: dict[str, Any], rec: Recorder) -> float:
    think = cfg["think_ms"] / 1000
    # Each think drawn from think x [1 - jitter, 1 + jitter] (the mean stays `think`): with
    # one fixed think time, agents that a slow moment delayed together stay in step and
    # come back as a burst, every think time, which a real model's varying step times
    # would not do.
    jitter = float(cfg.get("think_jitter", 0.0))

    async def agent(a: int) -> None:
        rng = random.Random(a)
        await asyncio.sleep(rng.uniform(0, think))
        for step in itertools.count():
            await _timed_call(d, cfg, a * 1_000_000 + step, a, rec)
            await asyncio.sleep(think * rng.uniform(1 - jitter, 1 + jitter))

    tasks = [asyncio.create_task(agent(a)) for a in range(cfg["agents"])]
    try:
        await asyncio.sleep(cfg["warmup_s"])
        emit("window-start")
        rec.on = True
        started = time.perf_counter()
        await asyncio.sleep(cfg["measure_s"])
        rec.on = False
        window = time.perf_counter() - started
        emit("window-end")
        return window
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def burst_mode(d: Dispatcher, cfg: dict[str, Any], rec: Recorder) -> float:
    async def run(calls: int, offset: int) -> None:
        counter = itertools.count()

        async def worker(w: int) -> None:
            while (i := next(counter)) < calls:
                await _timed_call(d, cfg, offset + i, w, rec)

        await asyncio.gather(*(worker(w) for w in range(cfg["concurrency"])))

    await run(cfg["warmup_calls"], 0)
    emit("window-start")
    rec.on = True
    started = time.perf_counter()
    await run(cfg["calls"], cfg["warmup_calls"])
    window = time.perf_counter() - started
    rec.on = False
    emit("window-end")
    return window


async def memory_mode(d: Dispatcher, cfg: dict[str, Any], rec: Recorder) -> float:
    """All calls at once; hold them until the orchestrator writes ``stop`` (it waits until
    the upstream sees them all), then cancel whatever is still in flight."""
    rec.on = True
    # The window starts before the calls do: their first steps are part of getting them in
    # flight (httpx's take minutes for 10,000, its pool being searched call by call).
    emit("window-start")
    started = time.perf_counter()
    tasks = [asyncio.create_task(_timed_call(d, cfg, a, a, rec)) for a in range(cfg["agents"])]
    await asyncio.to_thread(sys.stdin.readline)
    in_flight = sum(not t.done() for t in tasks)
    stopped = time.perf_counter()
    window = stopped - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    emit("window-end", in_flight=in_flight, cancel_s=time.perf_counter() - stopped)
    return window


MODES: dict[str, Callable[[Dispatcher, dict[str, Any], Recorder], Awaitable[float]]] = {
    "think": think_mode,
    "burst": burst_mode,
    "memory": memory_mode,
}


async def main(cfg: dict[str, Any]) -> None:
    dispatcher = make_dispatcher(
        cfg["dispatcher"],
        tools=BY_NAME,
        upstream=cfg["upstream"],
        sidecar=cfg["sidecar"],
        frames=cfg.get("frames", ""),
    )
    rec = Recorder()
    async with asyncio.timeout(cfg["deadline_s"]):
        await dispatcher.start()
        try:
            emit("ready")
            if cfg.get("wait_go"):
                await asyncio.to_thread(sys.stdin.readline)
            window = await MODES[cfg["mode"]](dispatcher, cfg, rec)
        finally:
            await dispatcher.aclose()
    emit(
        "result",
        calls=len(rec.latencies),
        window_s=window,
        statuses=dict(rec.statuses),
        latency=summarize_ms(rec.latencies),
        counters=dispatcher.counters(),
        **({"latencies_s": rec.latencies} if cfg.get("raw_latencies") else {}),
    )
    # Stay alive (and keep the peak RSS readable) until the orchestrator closes stdin.
    await asyncio.to_thread(sys.stdin.read)


def run(cfg: dict[str, Any]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The brain's command line sets glibc's malloc for large results (brain._malloc) and the
    # collector for thousands of agents (brain._gc); every Python dispatcher gets the same
    # settings, so none is measured with the other's malloc or collector.
    tune_malloc()
    tune_gc()
    if cfg.get("loop", "uvloop") == "uvloop":
        import uvloop

        uvloop.run(main(cfg))
    else:
        asyncio.run(main(cfg))


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
