"""The local planner with the bundled SmolLM2-135M, through the real sidecar to the demo tools.

* Twenty tasks run at once through the brain's HTTP API: every tool call the model
  proposes is a real tool with arguments valid for its input schema (checked here with
  jsonschema, and by the sidecar: no ``invalid_arguments``), the engine batches their
  decode steps, and a two-step task with parallel calls (two weather calls, then an
  answer written from both results) completes.
* The tokenizer converted from the GGUF gives the same token ids as llama.cpp's own
  (xllamacpp's server, started here on loopback from the same GGUF).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml

from brain._engine.engine import EngineOptions
from brain._engine.weights import bundled_gguf, load_model, prepare_model_dir
from brain._metrics import BrainMetrics
from brain._planners.local import LocalOptions, LocalPlanner
from demo_tools.config import local_tools_yaml

from brain_harness import BrainServer
from harness import SidecarProcess

Start = Callable[..., SidecarProcess]

CITY_PAIRS = [
    ("Cairo", "Reykjavík"),
    ("Oslo", "Madrid"),
    ("Tokyo", "London"),
    ("Paris", "Dubai"),
    ("Berlin", "Sydney"),
    ("Rome", "Moscow"),
    ("Seoul", "Lagos"),
    ("Delhi", "Chicago"),
]
TASKS = [
    *(f"Is it warmer in {a} or in {b} today?" for a, b in CITY_PAIRS),
    "What is the weather in Tokyo?",
    "What is the weather in Nairobi?",
    "What is 17 * 23?",
    "What is (17.5 * 4) / 3?",
    "What is sqrt(2) * 10?",
    "How many km are 26 miles?",
    "How many litres are 2 gallons?",
    "How many kg are 150 lb?",
    "What time is it in JST?",
    "What time is it in CET?",
    "Find articles about circuit breakers.",
    "Find articles about rate limiting.",
]


def _schemas() -> dict[str, Any]:
    config = yaml.safe_load(resources.files("demo_tools").joinpath("tools.yaml").read_text())
    return {t["name"]: t["input_schema"] for t in config["tools"]}


@pytest.mark.timeout(1200)  # ~40 model steps on a small shared CPU
async def test_the_bundled_model_plans_through_the_sidecar(
    demo_tools: str, start_sidecar: Start
) -> None:
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
    options = LocalOptions(max_new_tokens=80, engine=EngineOptions(max_batch=16, cpu_threads=1))
    planner = LocalPlanner(options=options, metrics=metrics.llm)
    async with (
        BrainServer(sidecar.unix_target, lambda _: planner, metrics=metrics) as server,
        aiohttp.ClientSession() as http,
    ):

        async def run(task: str) -> dict[str, Any]:
            body = {"task": task, "deadline_s": 600, "max_steps": 4}
            async with http.post(f"{server.url}/v1/runs?wait=true", json=body) as r:
                assert r.status == 200
                out: dict[str, Any] = await r.json()
                return out

        started = time.perf_counter()
        runs = await asyncio.gather(*(run(task) for task in TASKS))
        seconds = time.perf_counter() - started
        async with http.get(f"{server.url}/metrics") as resp:
            exposition = await resp.text()
        stats = planner.engine.stats()
    print(
        f"{len(runs)} local runs in {seconds:.1f}s; decode {stats.decode_tokens} tokens "
        f"at {stats.decode_tokens_per_second:.1f} tokens/s; batch sizes {stats.batch_sizes}"
    )
    schemas = _schemas()
    calls = 0
    parallel_answered = []
    for out in runs:
        events = out["events"]
        for event in events:
            if event["type"] == "call":
                calls += 1
                name, arguments = event["data"]["tool"], event["data"]["arguments"]
                assert name in schemas, event
                jsonschema.validate(arguments, schemas[name])
            if event["type"] == "result":
                assert event["data"]["status"] not in ("invalid_arguments", "unknown_tool")
                assert event["data"]["status"] not in ("malformed", "refused"), event
        plans = [e["data"] for e in events if e["type"] == "plan"]
        results = [e["data"] for e in events if e["type"] == "result"]
        if (
            out["state"] == "succeeded"
            and len(plans) == 2
            and len(results) >= 2
            and all(r["status"] == "ok" for r in results)
            and out["answer"]
        ):
            parallel_answered.append(out)
        # Never a crash: each run ends with an answer or a clear planner error.
        assert out["state"] in ("succeeded", "failed"), out
        if out["state"] == "failed":
            assert out["stop_reason"] in ("planner_error", "max_steps"), out
    assert calls >= len(TASKS)
    assert parallel_answered, "no task finished with parallel calls and an answer"
    example = parallel_answered[0]
    print("example:", example["task"], "->", example["answer"])
    # Batched decode steps, seen both by the engine and in the Prometheus metrics.
    assert stats.max_batch_size >= 8, stats.batch_sizes
    assert re.search(r"^brain_llm_decode_batch_size_count \d", exposition, re.M)
    assert re.search(r'^brain_llm_tokens_total\{phase="decode"\} [1-9]', exposition, re.M)


def _llama_server(gguf: Path) -> subprocess.Popen[str]:
    script = (
        "import sys, time, xllamacpp as x\n"
        "p = x.CommonParams()\n"
        "p.model.path = sys.argv[1]\n"
        "p.n_ctx = 256\n"
        "p.n_parallel = 1\n"
        "p.port = 0\n"
        "p.warmup = False\n"
        "s = x.Server(p)\n"
        "time.sleep(120)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(gguf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


STRINGS = [
    "Hello, world!",
    "Is it warmer in Cairo or in Reykjavík today?",
    '{"tool_calls": [{"name": "weather", "arguments": {"city": "São Paulo"}}]}',
    "What is (17.5 * 4) / 3?  Tabs\tand\nnewlines, ünïcödé, 日本語, emoji 🙂.",
    "   leading spaces and trailing   ",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "1234567890 3.14159 -42 1e10",
    "def f(x):\n    return x ** 2  # comment",
]


@pytest.mark.timeout(600)
async def test_the_converted_tokenizer_matches_llama_cpp() -> None:
    pytest.importorskip("xllamacpp")
    gguf = bundled_gguf()
    tokenizer = load_model(prepare_model_dir(), device="cpu").tokenizer
    proc = _llama_server(gguf)
    try:
        assert proc.stderr is not None
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stderr.readline)
            if not line:
                break
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
        assert url, "the llama.cpp server did not start"
        async with aiohttp.ClientSession() as http:
            for text in STRINGS:
                body = {"content": text, "parse_special": True}
                async with http.post(f"{url}/tokenize", json=body) as resp:
                    assert resp.status == 200
                    theirs = (await resp.json())["tokens"]
                ours = tokenizer(text, add_special_tokens=False)["input_ids"]
                assert ours == theirs, text
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
