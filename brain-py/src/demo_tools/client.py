"""The demo client: submit tasks to a running ``brain serve`` over HTTP, watch, report.

``python -m demo_tools.client --api http://127.0.0.1:8080 --tasks 120`` (what ``make run``
does once the brain is ready). Every task is submitted with ``POST /v1/runs`` (202),
followed on its Server-Sent Events stream until ``done``, and read back with
``GET /v1/runs/{id}``. All of them are in flight at once (up to ``concurrency``), so the
planner's embedding requests from many runs meet in the same batches. A progress line is
printed while they run; at the end, each task's steps and answer and a summary: runs by
state, tool calls by status, p50/p99 run latency, and the average inference batch size
read from the brain's ``/metrics``.

It lives with the demo tool service, not in ``brain``: it is only a demo, and its HTTP
client (aiohttp) is one of the packages of the ``demo`` extra that the brain itself never
imports.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["DEMO_TASKS", "DemoReport", "main", "run_demo"]

#: What the demo asks; the router planner handles each with one of the demo tools.
DEMO_TASKS = [
    "What's the weather in Tokyo right now?",
    "Is it warmer in Cairo or in Reykjavík today?",
    "Give me the 3-day forecast for São Paulo in Fahrenheit.",
    "Will it rain in London or Paris in the next days?",
    "How windy is it in Sydney?",
    "What is 2 ** 10 + sqrt(144)?",
    "Calculate (17.5 * 4) / 3.",
    "What is 1234 divided by 7?",
    "What's the square root of 2 times pi?",
    "How many miles is a 42.195 km marathon?",
    "Convert 100 Celsius to Fahrenheit.",
    "How many pounds are 70 kilograms?",
    "What is 2 gallons in litres?",
    "Find articles about circuit breakers and half-open state.",
    "Search for how rate limiting with token buckets works.",
    "What does the knowledge base say about Kubernetes pods?",
    "Look up gRPC streaming.",
    "What time is it in Tokyo (JST)?",
    "What's the current time in UTC?",
    "Which weekday is it now in CET?",
]


@dataclass(slots=True)
class TaskOutcome:
    index: int
    task: str
    run: dict[str, Any]
    latency_s: float


@dataclass(frozen=True, slots=True)
class LLMStats:
    """The local LM engine's counters (``brain_llm_*``): decode tokens, steps, time."""

    tokens: float = 0.0
    steps: float = 0.0
    seconds: float = 0.0
    max_batch: float = 0.0

    def __sub__(self, other: LLMStats) -> LLMStats:
        return LLMStats(
            self.tokens - other.tokens,
            self.steps - other.steps,
            self.seconds - other.seconds,
            self.max_batch,
        )

    @property
    def mean_batch(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class DemoReport:
    tasks: int = 0
    wall_s: float = 0.0
    outcomes: list[TaskOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rejected: int = 0
    batch_items: float = 0.0
    batches: float = 0.0
    #: The local LM engine (brain_llm_* metrics; zero for other planners).
    llm: LLMStats = field(default_factory=LLMStats)

    @property
    def ok(self) -> bool:
        return not self.errors and len(self.outcomes) == self.tasks

    def render(self) -> str:
        lines: list[str] = []
        for i, outcome in enumerate(sorted(self.outcomes, key=lambda o: o.index), 1):
            run = outcome.run
            lines.append(f"[{i}] {outcome.task}")
            for event in run.get("events") or []:
                line = _event_line(event)
                if line:
                    lines.append(f"    {line}")
            answer = run.get("answer") or run.get("error") or ""
            answer = answer.replace("\n", "\n            ")
            lines.append(f"    {run['state']} in {outcome.latency_s * 1000:.0f} ms: {answer}")
        states = Counter(o.run["state"] for o in self.outcomes)
        calls: Counter[str] = Counter()
        for o in self.outcomes:
            for event in o.run.get("events") or []:
                if event["type"] == "result":
                    calls[event["data"]["status"]] += 1
        latencies = sorted(o.latency_s * 1000 for o in self.outcomes)
        lines += [
            "",
            f"summary: {len(self.outcomes)}/{self.tasks} runs in {self.wall_s:.2f}s "
            f"({len(self.outcomes) / max(self.wall_s, 1e-9):.1f} runs/s)",
            "  runs by state:       " + ", ".join(f"{k} {v}" for k, v in states.most_common()),
            "  tool calls by status: " + ", ".join(f"{k} {v}" for k, v in calls.most_common()),
        ]
        if latencies:
            lines.append(
                f"  run latency:         p50 {_pct(latencies, 50):.0f} ms, "
                f"p99 {_pct(latencies, 99):.0f} ms"
            )
        if self.batches:
            lines.append(
                f"  inference batches:   {self.batches:.0f} batches, "
                f"{self.batch_items:.0f} items, "
                f"average batch size {self.batch_items / self.batches:.1f}"
            )
        if self.llm.steps:
            lines.append(
                f"  local LM decode:     {self.llm.tokens:.0f} tokens in {self.llm.steps:.0f} "
                f"batched steps, {self.llm.tokens_per_s:.1f} tokens/s while decoding "
                f"({self.llm.tokens / max(self.wall_s, 1e-9):.1f}/s over the demo), "
                f"mean decode batch {self.llm.mean_batch:.1f}"
            )
        if self.rejected:
            lines.append(f"  refused with 429 and retried: {self.rejected}")
        if self.errors:
            lines.append(f"  errors ({len(self.errors)}): {self.errors[:3]}")
        return "\n".join(lines)


def _event_line(event: dict[str, Any]) -> str | None:
    d = event["data"]
    if event["type"] == "plan" and "tool_calls" in d:
        calls = ", ".join(
            f"{c['name']}({', '.join(f'{k}={v!r}' for k, v in (c.get('arguments') or {}).items())})"
            for c in d["tool_calls"]
        )
        return f"step {d['step'] + 1}: {calls}"
    if event["type"] == "result":
        return f"  -> {d['tool']}: {d['status']} ({d['duration_s'] * 1000:.0f} ms)"
    if event["type"] == "error":
        return f"error: {d['message']}"
    return None


def _pct(sorted_values: list[float], p: int) -> float:
    if len(sorted_values) < 2:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[p - 1]


async def _one(
    http: aiohttp.ClientSession,
    api: str,
    index: int,
    task: str,
    report: DemoReport,
    progress: Counter[str],
    deadline_s: float = 60.0,
) -> None:
    started = time.perf_counter()
    while True:
        body = {"task": task, "deadline_s": deadline_s}
        async with http.post(f"{api}/v1/runs", json=body) as resp:
            if resp.status == 429:
                report.rejected += 1
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                continue
            if resp.status != 202:
                raise RuntimeError(f"POST /v1/runs answered {resp.status}: {await resp.text()}")
            run_id = (await resp.json())["id"]
            break
    progress["running"] += 1
    # Follow the run's events until `done` (the SSE stream ends there).
    async with http.get(f"{api}/v1/runs/{run_id}/events") as resp:
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "done":
                break
    latency = time.perf_counter() - started
    async with http.get(f"{api}/v1/runs/{run_id}") as resp:
        run = await resp.json(loads=orjson.loads)
    progress["running"] -= 1
    progress[run["state"]] += 1
    report.outcomes.append(TaskOutcome(index, task, run, latency))


async def _progress(
    report: DemoReport,
    progress: Counter[str],
    stop: asyncio.Event,
    llm: Callable[[], Awaitable[LLMStats]] | None = None,
) -> None:
    tty = sys.stdout.isatty()
    last = await llm() if llm is not None else LLMStats()
    while not stop.is_set():
        done = len(report.outcomes)
        line = (
            f"    progress: {done}/{report.tasks} finished, {progress['running']} running"
            f" ({progress['succeeded']} succeeded)"
        )
        if llm is not None:
            now = await llm()
            delta, last = now - last, now
            if delta.steps:
                line += (
                    f"; local LM {delta.tokens_per_s:.1f} tokens/s, "
                    f"decode batch {delta.mean_batch:.1f}"
                )
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        try:
            async with asyncio.timeout(0.25 if tty else 1.0):
                await stop.wait()
        except TimeoutError:
            pass
    if tty:
        print()


async def _batch_stats(http: aiohttp.ClientSession, api: str) -> tuple[float, float]:
    async with http.get(f"{api}/metrics") as resp:
        text = await resp.text()
    items = batches = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "brain_batch_size_sum":
                items += sample.value
            elif sample.name == "brain_batch_size_count":
                batches += sample.value
    return items, batches


async def _llm_stats(http: aiohttp.ClientSession, api: str) -> LLMStats:
    async with http.get(f"{api}/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "brain_llm_decode_batch_size_sum":
                values["tokens"] = sample.value
            elif sample.name == "brain_llm_decode_batch_size_count":
                values["steps"] = sample.value
            elif sample.name == "brain_llm_step_seconds_sum" and sample.labels == {
                "phase": "decode"
            }:
                values["seconds"] = sample.value
    return LLMStats(values.get("tokens", 0.0), values.get("steps", 0.0), values.get("seconds", 0.0))


async def run_demo(
    api: str, *, tasks: int, concurrency: int, seed: int = 7, deadline_s: float = 60.0
) -> DemoReport:
    """Submit ``tasks`` demo tasks (``concurrency`` at a time) and collect what happened."""
    rng = random.Random(seed)
    chosen = [DEMO_TASKS[i % len(DEMO_TASKS)] for i in range(tasks)]
    rng.shuffle(chosen)
    report = DemoReport(tasks=tasks)
    progress: Counter[str] = Counter()
    limit = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=max(300.0, deadline_s + 60))
    connector = aiohttp.TCPConnector(limit=concurrency * 2 + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        items0, batches0 = await _batch_stats(http, api)
        llm0 = await _llm_stats(http, api)

        async def guarded(index: int, task: str) -> None:
            async with limit:
                await _one(http, api, index, task, report, progress, deadline_s)

        stop = asyncio.Event()
        printer = asyncio.create_task(
            _progress(report, progress, stop, lambda: _llm_stats(http, api))
        )
        started = time.perf_counter()
        results = await asyncio.gather(
            *(guarded(i, t) for i, t in enumerate(chosen)), return_exceptions=True
        )
        report.wall_s = time.perf_counter() - started
        stop.set()
        await printer
        report.errors = [repr(r) for r in results if isinstance(r, BaseException)]
        items1, batches1 = await _batch_stats(http, api)
        report.llm = await _llm_stats(http, api) - llm0
    report.batch_items = items1 - items0
    report.batches = batches1 - batches0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo_tools.client",
        description="Submit the demo tasks to a running `brain serve` and report.",
    )
    parser.add_argument("--api", required=True, help="the brain's URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--tasks", type=int, default=60, help="how many tasks")
    parser.add_argument("--concurrency", type=int, default=60, help="tasks in flight at once")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds per run")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.concurrency < 1:
        parser.error("--tasks and --concurrency must be at least 1")
    report = asyncio.run(
        run_demo(
            args.api,
            tasks=args.tasks,
            concurrency=args.concurrency,
            seed=args.seed,
            deadline_s=args.deadline,
        )
    )
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
