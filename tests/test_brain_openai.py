"""The openai planner against the scripted LLM server, every request through the real sidecar.

brain ──► sidecar ``llm`` tool (adds ``Authorization: Bearer $LLM_API_KEY``) ──► ScriptedLLM
brain ──► sidecar ``weather`` / ``echo`` tools ──► loopback upstream
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from brain._planners.openai import OpenAIPlanner
from brain._runs.record import RunSpec

from brain_harness import LLM_API_KEY, BrainServer, tools_config
from harness import SidecarProcess, Upstream
from llm_server import ScriptedLLM, answer, calls, tool_call, tool_messages

Start = Callable[..., SidecarProcess]


@pytest.fixture
def sidecar(
    upstream: Upstream, start_sidecar: Start, monkeypatch: pytest.MonkeyPatch
) -> SidecarProcess:
    async def weather(request: web.Request) -> web.StreamResponse:
        city = request.path.rsplit("/", 1)[1]
        temps = {"Oslo": 4.5, "Rome": 19.0}
        return web.json_response({"city": city, "temp": temps.get(city, 10.0)})

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response({"got": await request.json()})

    for city in ("Oslo", "Rome"):
        upstream.route("GET", f"/weather/{city}", weather)
    upstream.route("POST", "/echo", echo)
    # Only the sidecar's environment needs the key; the brain (this process) never sends it.
    monkeypatch.setenv("LLM_API_KEY", LLM_API_KEY)
    return start_sidecar(tools_config(upstream.url, llm=True))


async def test_two_steps_of_parallel_tool_calls_then_the_answer(
    upstream: Upstream, sidecar: SidecarProcess
) -> None:
    def first(body: dict[str, Any]) -> dict[str, Any]:
        offered = {t["function"]["name"] for t in body["tools"]}
        assert offered == {"echo", "slow", "weather"}, offered  # the llm tool is hidden
        assert body["parallel_tool_calls"] is True
        assert body["tool_choice"] == "auto"
        assert body["messages"][1] == {"role": "user", "content": "Warmer: Oslo or Rome?"}
        return calls(
            tool_call("w1", "weather", {"city": "Oslo"}),
            tool_call("w2", "weather", {"city": "Rome"}),
        )

    def second(body: dict[str, Any]) -> dict[str, Any]:
        seen = tool_messages(body)
        assert set(seen) == {"w1", "w2"}
        temps = [orjson.loads(seen[k])["temp"] for k in ("w1", "w2")]
        return calls(
            tool_call("e1", "echo", {"difference": temps[1] - temps[0]}),
            tool_call("e2", "echo", {"warmer": "Rome"}),
        )

    def third(body: dict[str, Any]) -> dict[str, Any]:
        seen = tool_messages(body)
        assert set(seen) == {"w1", "w2", "e1", "e2"}
        difference = orjson.loads(seen["e1"])["got"]["difference"]
        return answer(f"Rome is warmer by {difference} degrees.")

    llm = ScriptedLLM(upstream, [first, second, third])
    async with (
        BrainServer(sidecar.unix_target, OpenAIPlanner) as server,
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.url}/v1/runs?wait=true", json={"task": "Warmer: Oslo or Rome?"}
        ) as resp,
    ):
        assert resp.status == 200
        run = await resp.json()

    assert llm.failures == []
    assert run["state"] == "succeeded", run
    assert run["answer"] == "Rome is warmer by 14.5 degrees."
    assert run["steps"] == 3
    assert run["tool_calls"] == 4
    plans = [e["data"] for e in run["events"] if e["type"] == "plan"]
    assert [len(p.get("tool_calls", [])) for p in plans] == [2, 2, 0]
    assert upstream.requests["/weather/Oslo"] == upstream.requests["/weather/Rome"] == 1
    # Every LLM request went through the sidecar, which added the key the brain never had.
    assert len(llm.requests) == 3
    assert all(h.get("Authorization") == f"Bearer {LLM_API_KEY}" for h in llm.headers)
    assert LLM_API_KEY not in orjson.dumps(llm.requests).decode()


async def test_malformed_arguments_and_invalid_arguments_are_corrected(
    upstream: Upstream, sidecar: SidecarProcess
) -> None:
    def first(_: dict[str, Any]) -> dict[str, Any]:
        return calls(
            tool_call("bad_json", "weather", '{"city": "Oslo"'),
            tool_call("bad_units", "weather", {"city": "Oslo", "units": "kelvin"}),
        )

    def second(body: dict[str, Any]) -> dict[str, Any]:
        seen = tool_messages(body)
        assert "not valid JSON" in orjson.loads(seen["bad_json"])["error"]
        violations = orjson.loads(seen["bad_units"])["violations"]
        assert [v["path"] for v in violations] == ["/units"], violations
        # The model's own malformed arguments are sent back verbatim in its message.
        sent = body["messages"][2]["tool_calls"][0]["function"]["arguments"]
        assert sent == '{"city": "Oslo"'
        return calls(tool_call("fixed", "weather", {"city": "Oslo", "units": "c"}))

    def third(body: dict[str, Any]) -> dict[str, Any]:
        result = orjson.loads(tool_messages(body)["fixed"])
        return answer(f"{result['temp']} °C in Oslo")

    llm = ScriptedLLM(upstream, [first, second, third])
    async with BrainServer(sidecar.unix_target, OpenAIPlanner) as server:
        run = server.brain.runs.submit(RunSpec(task="Weather in Oslo?"))
        assert await run.wait(30)

    assert llm.failures == []
    assert run.state.value == "succeeded", (run.error, [e.as_dict() for e in run.events])
    assert run.answer == "4.5 °C in Oslo"
    statuses = [e.data["status"] for e in run.events if e.type == "result"]
    assert statuses == ["malformed", "invalid_arguments", "ok"] or statuses == [
        "invalid_arguments",
        "malformed",
        "ok",
    ]
    assert upstream.requests["/weather/Oslo"] == 1  # only the corrected call reached it


async def test_an_llm_error_fails_the_run_with_the_reason(
    upstream: Upstream, sidecar: SidecarProcess
) -> None:
    ScriptedLLM(upstream, [])  # no turns: the server answers 500
    async with BrainServer(sidecar.unix_target, OpenAIPlanner) as server:
        run = server.brain.runs.submit(RunSpec(task="anything"))
        assert await run.wait(30)
    assert (run.state.value, run.stop_reason) == ("failed", "planner_error")
    assert "UPSTREAM_ERROR" in (run.error or "")
    assert "no turn 0 in the script" in (run.error or "")


def test_brain_run_prints_the_steps_and_the_answer(
    upstream: Upstream, sidecar: SidecarProcess
) -> None:
    ScriptedLLM(
        upstream,
        [calls(tool_call("w", "weather", {"city": "Oslo"})), answer("4.5 °C in Oslo")],
    )
    env = {k: v for k, v in os.environ.items() if k != "LLM_API_KEY"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "brain",
            "--sidecar",
            sidecar.unix_target,
            "--log-level",
            "WARNING",
            "run",
            "Weather in Oslo?",
            "--planner",
            "openai",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == "step 1: call weather(city='Oslo')"
    assert lines[1].startswith("  weather -> ok (")
    assert lines[2].startswith("state: succeeded (final_answer) after ")
    assert lines[3] == "answer: 4.5 °C in Oslo"

    listed = subprocess.run(
        [sys.executable, "-m", "brain", "--sidecar", sidecar.unix_target, "tools"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [line.split()[0] for line in listed.stdout.splitlines()[::2]] == [
        "echo",
        "llm",
        "slow",
        "weather",
    ]
