"""The brain's HTTP API end to end: uvicorn + FastAPI + agents + the real sidecar + upstreams."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from brain._brain import BrainOptions
from brain._runs.manager import RunManagerOptions

from brain_harness import LLM_API_KEY, BrainServer, ServeProcess, StubPlanner, tools_config
from harness import SidecarProcess, Upstream
from llm_server import ScriptedLLM, answer, calls, tool_call

Start = Callable[..., SidecarProcess]


@pytest.fixture
def sidecar(upstream: Upstream, start_sidecar: Start) -> SidecarProcess:
    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response({"got": await request.json()})

    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response({})

    upstream.route("POST", "/echo", echo)
    upstream.route("GET", "/slow", slow)
    return start_sidecar(tools_config(upstream.url))


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def post_run(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], query: str = ""
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(f"{url}/v1/runs{query}", json=body) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_submit_202_then_read_200_and_wait_true_200(
    sidecar: SidecarProcess, http: aiohttp.ClientSession
) -> None:
    async with BrainServer(sidecar.unix_target) as server:
        status, headers, body = await post_run(http, server.url, {"task": "call:echo"})
        assert status == 202
        assert headers["Location"] == f"/v1/runs/{body['id']}"
        assert body["links"]["events"] == f"/v1/runs/{body['id']}/events"
        run = server.brain.runs.get(body["id"])
        assert await run.wait(10)
        async with http.get(f"{server.url}/v1/runs/{body['id']}") as resp:
            assert resp.status == 200
            got = await resp.json()
        assert got["state"] == "succeeded"
        assert got["answer"] == "echo: ok"
        assert [e["seq"] for e in got["events"]] == list(range(len(got["events"])))

        status, _, done = await post_run(http, server.url, {"task": "call:echo"}, "?wait=true")
        assert status == 200
        assert done["state"] == "succeeded"
        assert {e["type"] for e in done["events"]} >= {"plan", "call", "result", "final"}

        async with http.get(f"{server.url}/v1/tools") as resp:
            assert resp.status == 200
            assert [t["name"] for t in await resp.json()] == ["echo", "slow", "weather"]


async def test_unknown_run_404_and_validation_422_with_field_paths(
    sidecar: SidecarProcess, http: aiohttp.ClientSession
) -> None:
    async with BrainServer(sidecar.unix_target) as server:
        for path in ("/v1/runs/nope", "/v1/runs/nope/events"):
            async with http.get(server.url + path) as resp:
                assert resp.status == 404
                assert (await resp.json())["detail"] == "no run 'nope'"
        async with http.post(f"{server.url}/v1/runs/nope/cancel") as resp:
            assert resp.status == 404

        cases = [
            ({"task": ""}, ["body", "task"]),
            ({"task": "x", "max_steps": 0}, ["body", "max_steps"]),
            ({"task": "x", "deadline_s": -1}, ["body", "deadline_s"]),
            ({"task": "x", "surprise": 1}, ["body", "surprise"]),
            ({"task": "x", "tools": ["echo", "nope"]}, ["body", "tools", 1]),
            ({}, ["body", "task"]),
        ]
        for body, loc in cases:
            status, _, error = await post_run(http, server.url, body)
            assert status == 422, body
            assert [e["loc"] for e in error["detail"]] == [loc], error
        async with http.post(f"{server.url}/v1/runs", data=b"{not json") as resp:
            assert resp.status == 422


async def test_over_the_admission_limit_429_with_retry_after(
    sidecar: SidecarProcess, http: aiohttp.ClientSession
) -> None:
    options = BrainOptions(runs=RunManagerOptions(max_in_flight=2, retry_after_s=3))
    async with BrainServer(sidecar.unix_target, options=options, drain_timeout=0.1) as server:
        for _ in range(2):
            status, _, _ = await post_run(http, server.url, {"task": "call:slow"})
            assert status == 202
        status, headers, body = await post_run(http, server.url, {"task": "call:slow"})
        assert status == 429
        assert headers["Retry-After"] == "3"
        assert "limit" in body["detail"]
        metrics = await scrape(http, server.url)
        assert metrics[("brain_runs_in_flight", ())] == 2
        assert metrics[("brain_runs_rejected_total", (("reason", "limit"),))] == 1


async def test_events_stream_in_order_and_end_with_done(
    sidecar: SidecarProcess, http: aiohttp.ClientSession
) -> None:
    async with BrainServer(sidecar.unix_target) as server:
        _, _, body = await post_run(http, server.url, {"task": "call:echo"})
        events = await read_sse(http, f"{server.url}/v1/runs/{body['id']}/events")
        names = [name for name, _, _ in events]
        assert names[-1] == "done"
        ids = [event_id for _, event_id, _ in events[:-1]]
        assert ids == [str(i) for i in range(len(ids))]
        assert names[:-1] == [
            "state",
            "plan",
            "call",
            "result",
            "plan",
            "final",
            "state",
        ]
        assert events[-1][2]["state"] == "succeeded"
        # Resuming after the third event replays only what came after it.
        resumed = await read_sse(
            http, f"{server.url}/v1/runs/{body['id']}/events", {"Last-Event-ID": "2"}
        )
        assert [i for _, i, _ in resumed[:-1]] == [str(i) for i in range(3, len(ids))]


async def test_cancel_mid_run_cancels_the_tool_call_in_the_sidecar(
    upstream: Upstream, sidecar: SidecarProcess, http: aiohttp.ClientSession
) -> None:
    async with BrainServer(sidecar.unix_target) as server:
        _, _, body = await post_run(http, server.url, {"task": "call:slow"})
        assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.requests["/slow"] == 1)
        async with http.post(f"{server.url}/v1/runs/{body['id']}/cancel") as resp:
            assert resp.status == 200
            run = await resp.json()
        assert (run["state"], run["stop_reason"]) == ("cancelled", "cancelled by a client")
        # The sidecar dropped the upstream request when the brain cancelled the call.
        assert await asyncio.to_thread(
            upstream.wait_for, lambda: upstream.disconnects["/slow"] == 1
        )
        async with http.post(f"{server.url}/v1/runs/{body['id']}/cancel") as resp:
            assert resp.status == 200  # idempotent


async def test_a_client_leaving_wait_true_does_not_cancel_unless_asked(
    upstream: Upstream, sidecar: SidecarProcess
) -> None:
    async with BrainServer(sidecar.unix_target, drain_timeout=0.2) as server:
        runs = server.brain.runs
        for query, expected in (
            ("?wait=true", "running"),
            ("?wait=true&cancel_on_disconnect=true", "cancelled"),
        ):
            before = set(runs._active)
            async with aiohttp.ClientSession() as http:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(1):
                        await post_run(http, server.url, {"task": "call:slow"}, query)
            new = set(runs._active) - before
            (run_id,) = new or {next(reversed(runs._finished))}
            run = runs.get(run_id)
            if expected == "cancelled":
                assert await run.wait(5)
            else:
                assert not await run.wait(0.2)  # still running after its client left
            assert run.state.value == expected, query


async def test_health_readiness_and_metrics_parse(
    sidecar: SidecarProcess, http: aiohttp.ClientSession
) -> None:
    async with BrainServer(sidecar.unix_target) as server:
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{server.url}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["sidecar_connected"] is True
        for _ in range(3):
            await post_run(http, server.url, {"task": "call:echo"}, "?wait=true")
        await post_run(http, server.url, {"task": "call:nope"}, "?wait=true")
        metrics = await scrape(http, server.url)
        assert metrics[("brain_runs_total", (("status", "succeeded"),))] == 4
        assert metrics[("brain_runs_in_flight", ())] == 0
        assert metrics[("brain_run_duration_seconds_count", ())] == 4
        assert metrics[("brain_tool_calls_total", (("status", "ok"),))] == 3
        assert metrics[("brain_tool_calls_total", (("status", "refused"),))] == 1
        assert metrics[("brain_planner_duration_seconds_count", (("planner", "stub"),))] == 8
        server.brain.runs._draining = True
        async with http.get(f"{server.url}/readyz") as resp:
            assert resp.status == 503
        status, headers, _ = await post_run(http, server.url, {"task": "call:echo"})
        assert status == 503
        assert headers["Retry-After"] == "1"


async def test_not_ready_while_the_model_loads_503(
    sidecar: SidecarProcess, http: aiohttp.ClientSession
) -> None:
    class Loading(StubPlanner):
        ready = False  # its model never finishes loading

    async with BrainServer(sidecar.unix_target, lambda _: Loading(), wait_ready=False) as server:
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200  # up, but
        async with http.get(f"{server.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["planner_ready"] is False
        status, headers, body = await post_run(http, server.url, {"task": "call:echo"})
        assert (status, headers["Retry-After"]) == (503, "1")
        assert "planner_ready" in body["detail"]


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def read_sse(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> list[tuple[str, str, Any]]:
    """(event, id, data) for every event of a stream, until it ends."""
    events: list[tuple[str, str, Any]] = []
    name, event_id, data = "message", "", ""
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if data:
                    events.append((name, event_id, orjson.loads(data)))
                name, event_id, data = "message", "", ""
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = line[6:]
    return events


# ---------------------------------------------------------------- `brain serve` and SIGTERM


@pytest.fixture
def llm_sidecar(
    upstream: Upstream, start_sidecar: Start, monkeypatch: pytest.MonkeyPatch
) -> SidecarProcess:
    gate = upstream.gate()

    async def slow(_: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"slow": "done"})

    upstream.route("GET", "/slow", slow)
    upstream.gate_event = gate  # type: ignore[attr-defined]
    ScriptedLLM(upstream, [calls(tool_call("s1", "slow", {})), answer("finished")])
    monkeypatch.setenv("LLM_API_KEY", LLM_API_KEY)
    return start_sidecar(tools_config(upstream.url, llm=True))


async def wait_ready(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(600):
        async with http.get(f"{url}/readyz") as resp:
            if resp.status == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("brain serve never became ready")


async def test_sigterm_drains_runs_in_flight_then_exits_0(
    upstream: Upstream, llm_sidecar: SidecarProcess, http: aiohttp.ClientSession
) -> None:
    serve = ServeProcess(llm_sidecar, "--drain-timeout", "20")
    try:
        await wait_ready(http, serve.url)
        waiting = asyncio.create_task(
            post_run(http, serve.url, {"task": "finish me"}, "?wait=true")
        )
        assert await asyncio.to_thread(
            upstream.wait_for, lambda: upstream.requests["/slow"] == 1, 10
        )
        serve.proc.send_signal(signal.SIGTERM)
        # Draining: not ready, no new runs; the run in flight goes on.
        for _ in range(100):
            async with http.get(f"{serve.url}/readyz") as resp:
                if resp.status == 503:
                    break
            await asyncio.sleep(0.02)
        assert resp.status == 503
        status, headers, _ = await post_run(http, serve.url, {"task": "another"})
        assert (status, headers["Retry-After"]) == (503, "1")
        upstream.open(upstream.gate_event)  # type: ignore[attr-defined]
        status, _, run = await waiting
        assert status == 200
        assert (run["state"], run["answer"]) == ("succeeded", "finished")
        assert await asyncio.to_thread(serve.proc.wait, 30) == 0
    finally:
        serve.kill()
    assert any('"drained finished=1 cancelled=0' in line for line in serve.logs), serve.logs


async def test_sigterm_cancels_runs_past_the_drain_timeout(
    upstream: Upstream, llm_sidecar: SidecarProcess, http: aiohttp.ClientSession
) -> None:
    serve = ServeProcess(llm_sidecar, "--drain-timeout", "0.5")
    try:
        await wait_ready(http, serve.url)
        status, _, _ = await post_run(http, serve.url, {"task": "never finishes"})
        assert status == 202
        assert await asyncio.to_thread(
            upstream.wait_for, lambda: upstream.requests["/slow"] == 1, 10
        )
        started = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(serve.proc.wait, 30) == 0
        assert time.monotonic() - started < 15
        # The cancelled run's tool call was cancelled in the sidecar too.
        assert await asyncio.to_thread(
            upstream.wait_for, lambda: upstream.disconnects["/slow"] == 1
        )
    finally:
        serve.kill()
    assert any("cancelled=1" in line for line in serve.logs), serve.logs


def test_serve_exits_1_when_the_planner_cannot_load_its_model(
    sidecar: SidecarProcess, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "brain",
            "--sidecar",
            sidecar.unix_target,
            "serve",
            "--port",
            "0",
            "--planner",
            "local",
            "--model-dir",
            str(tmp_path / "no-model"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "the planner failed to start" in done.stderr
    assert "no model in" in done.stderr
