"""``make eval``: how well each planner plans, on the fixed task set of ``tasks.py``.

For each planner asked for (``--planner``, default: router, local, openai) this starts the
real stack on loopback: the demo tool service, the sidecar with the demo ``tools.yaml``
and the brain (its HTTP server code, in this process) with the planner built from the
flags ``brain serve`` takes (:func:`brain.cli.planner_config`; ``openai`` with
:data:`demo_tools.llamacpp.SMALL_MODEL_FLAGS`, as ``make run PLANNER=openai``). ``openai``
talks to a real llama.cpp server (``xllamacpp``, the bundled SmolLM2-135M-Instruct) through
the sidecar's ``llm`` tool; the key is made up per run and held only by the sidecar and the
llama.cpp process. A planner that cannot be built here (a ``local`` model that does not
load) is reported as unavailable, with why.

Every task runs as one agent run; up to ``--concurrency`` at once: by default 16 for the
``local`` planner (one decode batch of the 135M model in torch: all 64 tasks took about
8 minutes on 2 cores) and 2 for the others. ``--local-tasks N`` runs a subset of N for
``local``, taken in turn from each category. A task *succeeds* when
the run finished with an answer, every expected tool call was proposed (right tool, right
arguments), and the answer contains an expected value. Reported per planner: success rate,
tool-call and answer accuracy, steps and tool calls per task, run latency (p50/p95), and
per category. Results go to ``results/eval.json`` and ``results/eval.md`` (``--results``).

    python tests/eval/run.py --planner router --planner openai [--limit 10] [--only w01,m01]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

EVAL_DIR = Path(__file__).resolve().parent
TESTS_DIR = EVAL_DIR.parent
REPO = TESTS_DIR.parent
for path in (EVAL_DIR, TESTS_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import yaml  # noqa: E402
from tasks import TASKS, EvalTask, fold  # noqa: E402

import demo_tools.process as demo_service  # noqa: E402
from brain._exceptions import BrainError  # noqa: E402
from brain._metrics import BrainMetrics  # noqa: E402
from brain._planners.factory import build_planner  # noqa: E402
from brain._runs.record import Run, RunSpec  # noqa: E402
from brain.cli import planner_config  # noqa: E402
from demo_tools.config import local_tools_yaml  # noqa: E402
from demo_tools.llamacpp import SMALL_MODEL_FLAGS, LlamaCppServer, llm_tool  # noqa: E402

from brain_harness import BrainServer  # noqa: E402
from harness import SidecarProcess  # noqa: E402

PLANNERS = ("router", "local", "openai")

#: Tool calls one step may propose: the two-city tasks need two; a small model that
#: repeats a call is held to a few.
MAX_CALLS = 3

#: The planners as ``brain serve`` builds them from these flags; the openai planner as
#: ``make run PLANNER=openai`` runs it in front of a small model on llama.cpp.
PLANNER_FLAGS: dict[str, tuple[str, ...]] = {"openai": SMALL_MODEL_FLAGS}


@dataclass(slots=True)
class Outcome:
    """One task's run, scored."""

    id: str
    category: str
    task: str
    state: str
    steps: int
    tool_calls: int
    latency_s: float
    calls_ok: bool
    answer_ok: bool
    answer: str
    error: str
    proposed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.state == "succeeded" and self.calls_ok and self.answer_ok


def score(task: EvalTask, run: Run, latency: float) -> Outcome:
    events = [e.as_dict() for e in run.events]
    proposed = [
        {"name": c["name"], "arguments": c.get("arguments")}
        for e in events
        if e["type"] == "plan"
        for c in e["data"].get("tool_calls", [])
    ]
    calls_ok = all(
        any(want.matches(c["name"], c["arguments"]) for c in proposed) for want in task.calls
    )
    answer = run.answer or ""
    answer_ok = any(fold(value) in fold(answer) for value in task.answer())
    return Outcome(
        id=task.id,
        category=task.category,
        task=task.task,
        state=run.state.value,
        steps=run.steps,
        tool_calls=run.tool_calls,
        latency_s=latency,
        calls_ok=calls_ok,
        answer_ok=answer_ok,
        answer=answer[:500],
        error=(run.error or "")[:500],
        proposed=proposed,
    )


def tools_yaml(demo_url: str, llm_url: str | None) -> str:
    config = yaml.safe_load(resources.files("demo_tools").joinpath("tools.yaml").read_text())
    if llm_url is not None:
        config["tools"].append(llm_tool(llm_url))
    return local_tools_yaml(config, replace={"http://127.0.0.1:8081": demo_url})


async def run_tasks(
    server: BrainServer, tasks: list[EvalTask], *, concurrency: int, deadline: float
) -> list[Outcome]:
    gate = asyncio.Semaphore(concurrency)
    done = Counter[str]()

    async def one(task: EvalTask) -> Outcome:
        async with gate:
            started = time.perf_counter()
            run = server.brain.runs.submit(
                RunSpec(
                    task=task.task,
                    max_steps=4,
                    max_tool_calls_per_step=MAX_CALLS,
                    deadline_s=deadline,
                )
            )
            await run.wait(deadline + 30)
            outcome = score(task, run, time.perf_counter() - started)
        done["ok" if outcome.success else "fail"] += 1
        finished = sum(done.values())
        print(f"\r  {finished}/{len(tasks)} done, {done['ok']} succeeded", end="", flush=True)
        return outcome

    outcomes = await asyncio.gather(*(one(t) for t in tasks))
    print()
    return list(outcomes)


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    n = len(outcomes)
    latencies = sorted(o.latency_s for o in outcomes)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] if n else 0.0

    by_category: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_category[o.category].append(o)
    return {
        "tasks": n,
        "success_rate": sum(o.success for o in outcomes) / n if n else 0.0,
        "tool_call_accuracy": sum(o.calls_ok for o in outcomes) / n if n else 0.0,
        "answer_accuracy": sum(o.answer_ok for o in outcomes) / n if n else 0.0,
        "finished_with_answer": sum(o.state == "succeeded" for o in outcomes) / n if n else 0.0,
        "mean_steps": statistics.fmean(o.steps for o in outcomes) if n else 0.0,
        "mean_tool_calls": statistics.fmean(o.tool_calls for o in outcomes) if n else 0.0,
        "latency_p50_s": pct(0.5),
        "latency_p95_s": pct(0.95),
        "latency_mean_s": statistics.fmean(latencies) if n else 0.0,
        "states": dict(Counter(o.state for o in outcomes)),
        "by_category": {
            cat: {"tasks": len(os_), "success_rate": sum(o.success for o in os_) / len(os_)}
            for cat, os_ in sorted(by_category.items())
        },
    }


async def eval_planner(
    name: str, tasks: list[EvalTask], demo_url: str, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    key = "sk-eval-" + secrets.token_urlsafe(18)
    concurrency = args.concurrency or (16 if name == "local" else 2)
    llama: LlamaCppServer | None = None
    sidecar: SidecarProcess | None = None
    started = time.monotonic()
    try:
        if name == "openai":
            llama = LlamaCppServer(
                api_key=key,
                threads=args.llama_threads,
                parallel=concurrency,
                ctx=4096 * concurrency,
                log_path=workdir / "llama-server.log",
            ).start()
        config = planner_config(["--planner", name, *PLANNER_FLAGS.get(name, ())])
        sidecar_dir = workdir / f"sidecar-{name}"
        sidecar_dir.mkdir(parents=True, exist_ok=True)
        sidecar = SidecarProcess(
            sidecar_dir,
            tools_yaml(demo_url, llama.url if llama else None),
            env={"LLM_API_KEY": key} if llama else {},
            binary=args.sidecar_bin,
        ).start()
        metrics = BrainMetrics()
        try:
            server = BrainServer(
                sidecar.unix_target,
                lambda client: build_planner(config, client, metrics),
                metrics=metrics,
                drain_timeout=5,
                wait_ready=False,
            )
        except (ValueError, ImportError, FileNotFoundError, OSError) as exc:
            return {"planner": name, "available": False, "reason": str(exc)}
        print(f"==> {name}: {len(tasks)} tasks, {concurrency} in flight")
        await server.__aenter__()
        try:
            try:
                # Loading a model on a busy 2-core machine can take minutes.
                await server.brain.wait_ready(args.ready_timeout)
            except BrainError as exc:  # e.g. the planner's model failed to load
                return {"planner": name, "available": False, "reason": str(exc)}
            ready_s = time.monotonic() - started
            outcomes = await run_tasks(
                server, tasks, concurrency=concurrency, deadline=args.deadline
            )
        finally:
            await server.__aexit__()
        return {
            "planner": name,
            "available": True,
            "concurrency": concurrency,
            "setup_s": ready_s,
            "wall_s": time.monotonic() - started,
            "summary": summarize(outcomes),
            "outcomes": [{**asdict(o), "success": o.success} for o in outcomes],
        }
    finally:
        if sidecar is not None:
            sidecar.kill()
        if llama is not None:
            llama.stop()


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Planning quality (make eval)",
        "",
        f"{meta['machine']}; {meta['date']}.",
        "",
        "| planner | tasks | success | right calls | right answer | steps/task | calls/task "
        "| p50 latency | p95 latency | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r["available"]:
            lines.append(f"| {r['planner']} | | unavailable: {r['reason']} | | | | | | | |")
            continue
        s = r["summary"]
        lines.append(
            f"| {r['planner']} | {s['tasks']} | {s['success_rate']:.0%} "
            f"| {s['tool_call_accuracy']:.0%} | {s['answer_accuracy']:.0%} "
            f"| {s['mean_steps']:.2f} | {s['mean_tool_calls']:.2f} "
            f"| {s['latency_p50_s']:.1f} s | {s['latency_p95_s']:.1f} s | {r['wall_s']:.0f} s |"
        )
    lines += ["", "Success by category:", ""]
    available = [r for r in results if r["available"]]
    if available:
        cats = sorted({c for r in available for c in r["summary"]["by_category"]})
        lines.append("| category | " + " | ".join(r["planner"] for r in available) + " |")
        lines.append("|---|" + "---|" * len(available))
        for cat in cats:
            cells = []
            for r in available:
                c = r["summary"]["by_category"].get(cat)
                cells.append(f"{c['success_rate']:.0%} of {c['tasks']}" if c else "")
            lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--planner", action="append", choices=PLANNERS, help="default: all")
    parser.add_argument("--limit", type=int, help="only the first N tasks")
    parser.add_argument("--only", help="comma-separated task ids")
    parser.add_argument(
        "--local-tasks",
        type=int,
        default=0,
        help="the local planner runs this many tasks, a few of each category (0: all)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="runs in flight at once (default: 16 for local, one decode batch; 2 for others)",
    )
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds per run")
    parser.add_argument(
        "--ready-timeout", type=float, default=900.0, help="seconds for a planner to load"
    )
    parser.add_argument(
        "--llama-threads",
        type=int,
        default=1,
        help="llama.cpp CPU threads (1: on a shared machine its spinning threads collide)",
    )
    parser.add_argument("--results", type=Path, default=EVAL_DIR / "results")
    parser.add_argument("--sidecar-bin", type=Path, default=None)
    return parser.parse_args(argv)


def select(args: argparse.Namespace, planner: str = "") -> list[EvalTask]:
    tasks = list(TASKS)
    if args.only:
        wanted = set(args.only.split(","))
        tasks = [t for t in tasks if t.id in wanted]
    if args.limit:
        tasks = tasks[: args.limit]
    elif planner == "local" and not args.only and args.local_tasks:
        tasks = stratified(tasks, args.local_tasks)
    return tasks


def stratified(tasks: list[EvalTask], n: int) -> list[EvalTask]:
    """``n`` tasks taken in turn from each category (in the order of ``TASKS``), so a
    subset still covers every category: 16 give 3 of each of the first four, 2 of the
    last two."""
    by_category: dict[str, list[EvalTask]] = defaultdict(list)
    for task in tasks:
        by_category[task.category].append(task)
    picked: list[EvalTask] = []
    while len(picked) < min(n, len(tasks)):
        for queue in by_category.values():
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    order = {t.id: i for i, t in enumerate(tasks)}
    return sorted(picked, key=lambda t: order[t.id])


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with demo_service.running() as demo_url:
        for name in args.planner or PLANNERS:
            tasks = select(args, name)
            result = await eval_planner(name, tasks, demo_url, args.results / "work", args)
            if not result["available"]:
                print(f"==> {name}: unavailable ({result['reason']})")
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sidecar_bin is None:
        release = REPO / "sidecar-rs/target/release/sidecar"
        args.sidecar_bin = release if release.exists() else None  # None: the harness's default
    (args.results / "work").mkdir(parents=True, exist_ok=True)
    # SIGTERM stops the eval as Ctrl-C does: asyncio.run cancels the tasks, whose
    # finally blocks stop the tool service, the sidecar and llama.cpp it started (with
    # the default action they would outlive it).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        results = asyncio.run(amain(args))
    except KeyboardInterrupt:
        print("eval: interrupted; the processes it started are stopped", file=sys.stderr)
        return 130
    meta = {
        "tasks": {name: len(select(args, name)) for name in args.planner or PLANNERS},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "planner_flags": PLANNER_FLAGS,
    }
    report = {"meta": meta, "results": results}
    (args.results / "eval.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    table = markdown(results, meta)
    (args.results / "eval.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
