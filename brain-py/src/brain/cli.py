"""The ``brain`` command.

``brain serve`` runs the HTTP API (agent runs planned by the router, openai or local
planner, every tool call through the sidecar); ``brain run "task"`` runs one task in this
process and prints its steps and answer; ``brain tools`` lists the sidecar's tools. (The
demo client that submits the demo tasks to a running ``brain serve`` is
``python -m demo_tools.client``.)

Every flag can also be set by an environment variable (shown in ``--help``), which is how
the Kubernetes manifests configure it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from ._api.limits import HttpLimits
from ._brain import Brain, BrainOptions
from ._client import ClientOptions, SidecarClient
from ._exceptions import AdmissionRefused, BrainError
from ._gc import tune_gc
from ._logging import setup_logging
from ._malloc import tune_malloc
from ._metrics import BrainMetrics
from ._planners.factory import PLANNERS, ROUTER_ANSWERS, PlannerConfig, build_planner
from ._planners.openai import TOOL_FORMATS, OpenAIOptions
from ._runs.manager import RunManagerOptions
from ._runs.record import RunEvent, RunSpec

__all__ = ["main", "planner_config"]

DEFAULT_SIDECAR = "unix:/tmp/tandem/sidecar.sock"

#: ``--llm-compact-json``: llguidance (llama.cpp's grammar engine) reads this key of a JSON
#: schema; without optional whitespace a step takes fewer tokens.
COMPACT_JSON = {"x-guidance": {"whitespace_flexible": False}}


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sidecar",
        default=_env("BRAIN_SIDECAR", DEFAULT_SIDECAR),
        help="sidecar gRPC target: unix:/path.sock or host:port (BRAIN_SIDECAR; %(default)s)",
    )
    parser.add_argument(
        "--sidecar-frames",
        metavar="PATH",
        default=_env("BRAIN_SIDECAR_FRAMES", ""),
        help="the sidecar's frames socket (its --listen frames:PATH): tool calls travel there "
        "framed without gRPC, at a fraction of the brain's CPU per call; the tool list still "
        "comes over --sidecar (BRAIN_SIDECAR_FRAMES; default: calls over gRPC too)",
    )
    parser.add_argument(
        "--log-level", default=_env("BRAIN_LOG_LEVEL", "INFO"), help="BRAIN_LOG_LEVEL"
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=_env("BRAIN_LOG_FORMAT", "text"),
        help="json: one object per line (BRAIN_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API")
    _planner_flags(serve)
    serve.add_argument("--host", default=_env("BRAIN_HOST", "127.0.0.1"), help="BRAIN_HOST")
    serve.add_argument(
        "--port", type=int, default=int(_env("BRAIN_PORT", "8080")), help="0 picks a free port"
    )
    serve.add_argument(
        "--max-runs",
        type=int,
        default=int(_env("BRAIN_MAX_RUNS", "10000")),
        help="runs in flight at most; more get 429 (BRAIN_MAX_RUNS; %(default)s)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=float(_env("BRAIN_DRAIN_TIMEOUT", "20")),
        help="seconds runs may take to finish after SIGTERM (BRAIN_DRAIN_TIMEOUT; %(default)s)",
    )
    _http_limit_flags(serve)

    run = sub.add_parser("run", help="run one task here and print its steps and answer")
    run.add_argument("task", help="what the agent should do")
    _planner_flags(run)
    run.add_argument("--max-steps", type=int, default=10)
    run.add_argument("--deadline", type=float, default=120.0, help="seconds")
    run.add_argument("--tools", help="comma-separated tools the run may use (default: all)")

    sub.add_parser("tools", help="list the sidecar's tools")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _http_limit_flags(p: argparse.ArgumentParser) -> None:
    # String defaults: argparse converts them with ``type``, so a bad environment
    # variable is reported like a bad flag.
    d = HttpLimits()
    p.add_argument(
        "--max-connections",
        type=_positive_int,
        default=_env("BRAIN_MAX_CONNECTIONS", str(d.max_connections)),
        help="API connections open at once; more are answered 503 and closed "
        "(BRAIN_MAX_CONNECTIONS; %(default)s)",
    )
    p.add_argument(
        "--max-connections-per-peer",
        type=_positive_int,
        default=_env("BRAIN_MAX_CONNECTIONS_PER_PEER", str(d.max_connections_per_peer)),
        help="API connections open at once from one address; raise it behind a proxy that "
        "funnels every client through a few addresses (BRAIN_MAX_CONNECTIONS_PER_PEER; "
        "%(default)s)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=_positive_int,
        default=_env("BRAIN_MAX_REQUEST_BYTES", str(d.max_body_bytes)),
        help="largest request body; larger ones get 413 (BRAIN_MAX_REQUEST_BYTES; %(default)s)",
    )
    p.add_argument(
        "--request-head-timeout",
        type=_positive_float,
        default=_env("BRAIN_REQUEST_HEAD_TIMEOUT", str(d.head_timeout)),
        help="seconds a new connection may take to send its request head "
        "(BRAIN_REQUEST_HEAD_TIMEOUT; %(default)s)",
    )
    p.add_argument(
        "--request-body-timeout",
        type=_positive_float,
        default=_env("BRAIN_REQUEST_BODY_TIMEOUT", str(d.body_timeout)),
        help="seconds from a request's head to the end of its body; later gets 408 "
        "(BRAIN_REQUEST_BODY_TIMEOUT; %(default)s)",
    )


def _http_limits(args: argparse.Namespace) -> HttpLimits:
    return HttpLimits(
        head_timeout=args.request_head_timeout,
        max_connections=args.max_connections,
        max_connections_per_peer=args.max_connections_per_peer,
        max_body_bytes=args.max_request_bytes,
        body_timeout=args.request_body_timeout,
    )


def _optional_int(text: str | None) -> int | None:
    return int(text) if text else None


def _planner_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--planner",
        choices=PLANNERS,
        default=_env("BRAIN_PLANNER", "router"),
        help="BRAIN_PLANNER (%(default)s)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        default=os.environ.get("BRAIN_MODEL_DIR"),
        help="local planner: causal LM directory (BRAIN_MODEL_DIR; default: the bundled model)",
    )
    p.add_argument(
        "--gguf",
        type=Path,
        default=os.environ.get("BRAIN_GGUF"),
        help="local planner: a GGUF model file, converted once into ~/.cache/tandem (BRAIN_GGUF)",
    )
    p.add_argument(
        "--embedding-model-dir",
        type=Path,
        default=os.environ.get("BRAIN_EMBEDDING_MODEL_DIR"),
        help="router planner: sentence-embedding model (default: the bundled all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--router-answers",
        choices=ROUTER_ANSWERS,
        default=_env("BRAIN_ROUTER_ANSWERS", "template"),
        help="router planner: who writes the final answer: template (sentences built from "
        "the results, no model) or local (the local causal LM of --model-dir/--gguf, else "
        "the bundled one) (BRAIN_ROUTER_ANSWERS; %(default)s)",
    )
    p.add_argument("--device", default=os.environ.get("BRAIN_DEVICE"), help="cuda or cpu")
    p.add_argument(
        "--llm-threads",
        type=int,
        default=os.environ.get("BRAIN_LLM_THREADS"),
        help="local planner: torch CPU threads (BRAIN_LLM_THREADS; default one per core; "
        "fewer when the cores are shared with the sidecar and other busy processes)",
    )
    p.add_argument(
        "--llm-tool", default=_env("BRAIN_LLM_TOOL", "llm"), help="openai: the sidecar tool"
    )
    p.add_argument("--llm-model", default=_env("BRAIN_LLM_MODEL", "default"), help="openai")
    p.add_argument(
        "--llm-tool-format",
        choices=TOOL_FORMATS,
        default=_env("BRAIN_LLM_TOOL_FORMAT", "tools"),
        help="openai: tools (native tool calling) or json_schema (tools in the prompt, the "
        "reply constrained to a JSON step: for models without tool calling, e.g. small "
        "models behind llama.cpp) (BRAIN_LLM_TOOL_FORMAT; %(default)s)",
    )
    p.add_argument(
        "--llm-max-tool-steps",
        type=int,
        default=_optional_int(os.environ.get("BRAIN_LLM_MAX_TOOL_STEPS")),
        help="openai: steps that may call tools before the model must answer "
        "(BRAIN_LLM_MAX_TOOL_STEPS; default: no limit)",
    )
    p.add_argument(
        "--llm-first-step-calls-tool",
        action=argparse.BooleanOptionalAction,
        default=_env("BRAIN_LLM_FIRST_STEP_CALLS_TOOL", "") in ("1", "true"),
        help="openai: the first step must call a tool (BRAIN_LLM_FIRST_STEP_CALLS_TOOL)",
    )
    p.add_argument(
        "--llm-max-tokens",
        type=int,
        default=int(_env("BRAIN_LLM_MAX_TOKENS", "1024")),
        help="openai: max_tokens per completion (BRAIN_LLM_MAX_TOKENS; %(default)s)",
    )
    p.add_argument(
        "--llm-answer-max-chars",
        type=int,
        default=_optional_int(os.environ.get("BRAIN_LLM_ANSWER_MAX_CHARS")),
        help="openai, json_schema: the longest answer in characters, well within "
        "--llm-max-tokens so a reply is never cut (BRAIN_LLM_ANSWER_MAX_CHARS; default: none)",
    )
    p.add_argument(
        "--llm-timeout",
        type=float,
        default=float(_env("BRAIN_LLM_TIMEOUT", "60")),
        help="openai: seconds one completion may take (BRAIN_LLM_TIMEOUT; %(default)s)",
    )
    p.add_argument(
        "--llm-compact-json",
        action=argparse.BooleanOptionalAction,
        default=_env("BRAIN_LLM_COMPACT_JSON", "") in ("1", "true"),
        help="openai, json_schema: ask llama.cpp's grammar engine (llguidance) for JSON "
        "without optional whitespace: fewer tokens per step (BRAIN_LLM_COMPACT_JSON)",
    )


def _planner_config(args: argparse.Namespace) -> PlannerConfig:
    return PlannerConfig(
        kind=args.planner,
        model_dir=args.model_dir,
        gguf=args.gguf,
        llm_threads=int(args.llm_threads) if args.llm_threads else None,
        embedding_model_dir=args.embedding_model_dir,
        device=args.device,
        router_answers=args.router_answers,
        openai=OpenAIOptions(
            model=args.llm_model,
            llm_tool=args.llm_tool,
            tool_format=args.llm_tool_format,
            max_tool_steps=args.llm_max_tool_steps,
            first_step_calls_tool=args.llm_first_step_calls_tool,
            max_tokens=args.llm_max_tokens,
            answer_max_chars=args.llm_answer_max_chars,
            timeout_s=args.llm_timeout,
            schema_extensions=COMPACT_JSON if args.llm_compact_json else {},
        ),
    )


def planner_config(flags: Sequence[str]) -> PlannerConfig:
    """The planner configuration that ``brain serve`` builds from ``flags`` (the planner
    flags of ``--help``), for programs that host a brain in-process (``make eval``)."""
    return _planner_config(_parser().parse_args(["serve", *flags]))


def _brain(args: argparse.Namespace, options: BrainOptions | None = None) -> Brain:
    client = SidecarClient(
        args.sidecar, options=ClientOptions(frames_socket=args.sidecar_frames or None)
    )
    metrics = BrainMetrics()
    planner = build_planner(_planner_config(args), client, metrics)
    return Brain(client, planner, metrics=metrics, options=options)


async def _serve(args: argparse.Namespace) -> int:
    from ._api.server import bind, serve

    limits = _http_limits(args)
    brain = _brain(args, BrainOptions(runs=RunManagerOptions(max_in_flight=args.max_runs)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"brain: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def listening(url: str) -> None:
        print(f"brain listening on {url}", flush=True)

    return await serve(
        brain,
        sock,
        stop,
        drain_timeout=args.drain_timeout,
        on_listening=listening,
        limits=limits,
    )


def format_event(event: RunEvent) -> str | None:
    """One line for an event of a run, as ``brain run`` prints them."""
    d = event.data
    if event.type == "plan" and "tool_calls" in d:
        calls = ", ".join(
            f"{c['name']}({_args(c.get('arguments'))})" if "arguments" in c else f"{c['name']}(?)"
            for c in d["tool_calls"]
        )
        return f"step {d['step'] + 1}: call {calls}"
    if event.type == "result":
        return f"  {d['tool']} -> {d['status']} ({d['duration_s'] * 1000:.0f} ms)"
    if event.type == "retry":
        return f"  {d['status']}: retrying in {d['wait_s']:.2f}s"
    if event.type == "error":
        return f"  error: {d['message']}"
    return None


def _args(arguments: object) -> str:
    if not isinstance(arguments, dict):
        return ""
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items())


async def _run(args: argparse.Namespace) -> int:
    brain = _brain(args)
    await brain.start()
    try:
        await brain.wait_ready(60)
        tools = tuple(t.strip() for t in args.tools.split(",")) if args.tools else None
        spec = RunSpec(
            task=args.task, tools=tools, max_steps=args.max_steps, deadline_s=args.deadline
        )
        run = brain.runs.submit(spec)
        async for event in run.follow():
            line = format_event(event)
            if line is not None:
                print(line, flush=True)
        print(f"state: {run.state.value} ({run.stop_reason}) after {run.duration_s or 0:.2f}s")
        if run.answer is not None:
            print(f"answer: {run.answer}")
        elif run.error:
            print(f"error: {run.error}")
        return 0 if run.state.value == "succeeded" else 1
    finally:
        await brain.aclose()


async def _tools(target: str) -> int:
    async with SidecarClient(target) as client:
        for tool in await client.list_tools():
            limits = ", ".join(f"{r.rate}/{r.period_ms}ms per {r.scope}" for r in tool.rate_limits)
            print(f"{tool.name:<16} {tool.description.split('.')[0][:70]}")
            args = ", ".join(tool.parameters.get("properties", {}))
            print(f"{'':<16} args: {args}" + (f"; limits: {limits}" if limits else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    tune_malloc()
    tune_gc()
    try:
        if args.command == "serve":
            return uvloop.run(_serve(args))
        if args.command == "run":
            return uvloop.run(_run(args))
        return uvloop.run(_tools(args.sidecar))
    except (BrainError, ValueError) as exc:
        if isinstance(exc, AdmissionRefused):
            print(f"brain: run refused: {exc}", file=sys.stderr)
        else:
            print(f"brain: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
