"""The openai planner against a real llama.cpp server, every request through the real sidecar.

brain (OpenAIPlanner, json_schema steps) ──► sidecar ``llm`` tool
    (adds ``Authorization: Bearer $LLM_API_KEY`` from its own environment)
    ──► llama.cpp server (xllamacpp, SmolLM2-135M-Instruct, ``--api-key``) on loopback
brain ──► sidecar ``weather`` ──► the demo tool service on loopback

The key is made up per test run and given to two processes only: the llama.cpp server
(which answers 401 without it) and the sidecar. The brain runs in this process, whose
environment never holds it.
"""

from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import orjson
import pytest
import yaml

from brain._planners.openai import OpenAIOptions, OpenAIPlanner
from brain._runs.record import RunSpec
from demo_tools.config import local_tools_yaml
from demo_tools.llamacpp import LlamaCppServer, llm_tool

from brain_harness import BrainServer
from harness import SidecarProcess

Start = Callable[..., SidecarProcess]

# Slow on a busy 2-core machine: prompt processing of the tool list takes tens of seconds
# the first time (later requests reuse llama.cpp's prompt cache).
pytestmark = pytest.mark.timeout(900)

KEY = "sk-llama-" + secrets.token_urlsafe(18)

#: What the 135M model is run with: JSON steps constrained by the tools' schemas, a tool
#: call first, an answer after one step of tools, compact JSON (llguidance).
OPTIONS = OpenAIOptions(
    tool_format="json_schema",
    first_step_calls_tool=True,
    max_tool_steps=1,
    max_tokens=160,
    answer_max_chars=240,
    timeout_s=600,
    schema_extensions={"x-guidance": {"whitespace_flexible": False}},
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    # One thread: on a machine shared with other builds, llama.cpp's spinning worker
    # threads slow each other down tenfold (measured); one slot per test is enough.
    with LlamaCppServer(api_key=KEY, threads=1, parallel=1, ctx=4096, log_path=log) as server:
        yield server


def stack_config(demo_tools: str, llama_url: str) -> str:
    """The demo tools.yaml on loopback, plus the ``llm`` tool pointing at llama.cpp."""
    config = yaml.safe_load(resources.files("demo_tools").joinpath("tools.yaml").read_text())
    config["tools"].append(llm_tool(llama_url))
    return local_tools_yaml(config, replace={"http://127.0.0.1:8081": demo_tools})


def post_completion(url: str, key: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=600) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_refuses_requests_without_the_key(llama: LlamaCppServer) -> None:
    assert post_completion(llama.url, None) == 401
    assert post_completion(llama.url, "sk-wrong") == 401


async def test_a_tool_call_and_an_answer_through_the_sidecar(
    llama: LlamaCppServer, demo_tools: str, start_sidecar: Start, tmp_path: Path
) -> None:
    # Only the sidecar's environment gets the key; this process (the brain) never has it.
    assert KEY not in "".join(os.environ.values())
    sidecar = start_sidecar(stack_config(demo_tools, llama.url), env={"LLM_API_KEY": KEY})
    async with BrainServer(
        sidecar.unix_target, lambda client: OpenAIPlanner(client, options=OPTIONS)
    ) as server:
        run = server.brain.runs.submit(
            RunSpec(
                task="What is the weather in Paris?",
                tools=("weather",),
                max_steps=3,
                max_tool_calls_per_step=2,
                deadline_s=800,
            )
        )
        assert await run.wait(850)

    events = [e.as_dict() for e in run.events]
    assert run.state.value == "succeeded", (run.error, events)
    plans = [e["data"] for e in events if e["type"] == "plan"]
    calls = [c for p in plans for c in p.get("tool_calls", [])]
    # A tool call came back: constrained by the weather tool's input schema, so the
    # sidecar validated it (no invalid_arguments, nothing malformed) and ran it.
    assert calls, plans
    assert {c["name"] for c in calls} == {"weather"}, plans
    statuses = [e["data"]["status"] for e in events if e["type"] == "result"]
    assert statuses, events
    assert not {"invalid_arguments", "malformed"} & set(statuses), statuses
    assert "ok" in statuses or "upstream_error" in statuses, statuses
    # ... and then a final answer, written by the model.
    assert isinstance(run.answer, str)
    assert run.answer.strip()
    assert run.steps == 2
    # The llama.cpp server accepted the planner's requests: the key reached it, added by
    # the sidecar. The brain's side never held it: not in its config, not in what it sent.
    assert KEY not in repr(OPTIONS)
    assert KEY not in orjson.dumps(events).decode()
    assert KEY not in "".join(os.environ.values())


async def test_a_sidecar_without_the_key_is_refused_and_the_run_says_why(
    llama: LlamaCppServer, demo_tools: str, start_sidecar: Start
) -> None:
    sidecar = start_sidecar(
        stack_config(demo_tools, llama.url), env={"LLM_API_KEY": "sk-not-the-key"}
    )
    async with BrainServer(
        sidecar.unix_target, lambda client: OpenAIPlanner(client, options=OPTIONS)
    ) as server:
        run = server.brain.runs.submit(RunSpec(task="What is the weather in Paris?"))
        assert await run.wait(120)
    assert (run.state.value, run.stop_reason) == ("failed", "planner_error")
    assert "UPSTREAM_ERROR" in (run.error or ""), run.error
    assert "Invalid API Key" in (run.error or ""), run.error
