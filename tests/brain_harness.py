"""Real parts for the brain's cross-language tests.

* :func:`tools_config` writes a tools.yaml for loopback upstreams (through the one helper,
  :func:`demo_tools.config.local_tools_yaml`), optionally with the ``llm`` tool that forwards
  chat completions to a :class:`llm_server.ScriptedLLM` with the API key only the
  sidecar holds (``${env:LLM_API_KEY}``).
* :class:`BrainServer` runs ``brain serve``'s code (the FastAPI app on uvicorn, with the
  drain) in the test's event loop on 127.0.0.1:0.
* :class:`ServeProcess` runs ``python -m brain serve`` as its own process (the openai
  planner, as the pod runs it) on the sidecar's socket.
* :class:`StubPlanner` plans without a model: ``call:<tool>`` tasks call that tool once
  and then answer with what they observed; it can take a fixed time per step.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from brain import SidecarClient
from brain._api.server import bind, serve
from brain._brain import Brain, BrainOptions
from brain._metrics import BrainMetrics
from brain._planners.base import Planner, PlanningState, Step, ToolCallRequest
from demo_tools.config import local_tools_yaml
from demo_tools.llamacpp import llm_tool

from harness import REPO, SidecarProcess

LLM_API_KEY = "sk-test-only-the-sidecar-knows-this"


def tools_config(base: str, *, llm: bool = False, extra: list[dict[str, Any]] | None = None) -> str:
    """Tools on the loopback upstream ``base``: echo, slow, weather (+ llm)."""
    tools: list[dict[str, Any]] = [
        {
            "name": "echo",
            "description": "Echo the arguments back.",
            "input_schema": {"type": "object"},
            "request": {"method": "POST", "url": f"{base}/echo"},
        },
        {
            "name": "slow",
            "description": "Takes its time.",
            "input_schema": {"type": "object"},
            "request": {"url": f"{base}/slow"},
        },
        {
            "name": "weather",
            "description": "Current weather for a city.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "units": {"enum": ["c", "f"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "request": {"url": base + "/weather/{city}", "query": {"units": "{units}"}},
        },
    ]
    if llm:
        tools.append(llm_tool(base, timeout="20s"))
    tools += extra or []
    return local_tools_yaml({"defaults": {"timeout": "10s"}, "tools": tools})


class StubPlanner:
    """``call:<tool>`` → one call of that tool, then an answer naming its status."""

    name = "stub"
    ready = True
    reserved_tools: frozenset[str] = frozenset()

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def plan(self, state: PlanningState) -> Step:
        if self.latency:
            await asyncio.sleep(self.latency)
        if state.history:
            obs = state.history[-1].observations[0]
            return Step.answer(f"{obs.call.name}: {obs.status}")
        if state.task.startswith("call:"):
            tool = state.task.removeprefix("call:")
            return Step.calls(ToolCallRequest(f"{state.run_id}-1", tool, {"n": 1}, '{"n": 1}'))
        return Step.answer(f"no tool needed for {state.task!r}")


class BrainServer:
    """The brain's HTTP server in this event loop; ``async with`` starts and drains it.

    ``planner`` builds the planner from the server's sidecar client (default: a
    :class:`StubPlanner`).
    """

    def __init__(
        self,
        sidecar_target: str,
        planner: Callable[[SidecarClient], Planner] | None = None,
        *,
        options: BrainOptions | None = None,
        drain_timeout: float = 5.0,
        metrics: BrainMetrics | None = None,
        wait_ready: bool = True,
    ) -> None:
        self.client = SidecarClient(sidecar_target)
        self.metrics = metrics or BrainMetrics()
        chosen = planner(self.client) if planner is not None else StubPlanner()
        self.brain = Brain(self.client, chosen, metrics=self.metrics, options=options)
        self.drain_timeout = drain_timeout
        self.wait_ready = wait_ready
        self.stop = asyncio.Event()
        self.url = ""
        self.exit_code: int | None = None
        self._task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> BrainServer:
        listening = asyncio.get_running_loop().create_future()
        sock = bind("127.0.0.1", 0)
        self._task = asyncio.create_task(
            serve(
                self.brain,
                sock,
                self.stop,
                drain_timeout=self.drain_timeout,
                on_listening=listening.set_result,
            )
        )
        done, _ = await asyncio.wait(
            {listening, self._task}, timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        try:
            if listening not in done:
                raise RuntimeError("the brain server did not start")
            self.url = listening.result()
            if self.wait_ready:
                await self.brain.wait_ready(60)
        except BaseException:
            await self.__aexit__()  # stop the server so that nothing leaks into later tests
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop.set()
        if self._task is not None and self.exit_code is None:
            self.exit_code = await asyncio.wait_for(self._task, self.drain_timeout + 30)


class ServeProcess:
    """``python -m brain serve`` with the openai planner, as the pod runs it."""

    def __init__(self, sidecar: SidecarProcess, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("LLM_API_KEY", None)  # the brain never has the key
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "brain",
                "--sidecar",
                sidecar.unix_target,
                "--log-format",
                "json",
                "serve",
                "--planner",
                "openai",
                "--port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.logs: list[str] = []
        self.url = ""
        ready = threading.Event()

        def read_stdout() -> None:
            assert self.proc.stdout is not None
            with self.proc.stdout:
                for line in self.proc.stdout:
                    if line.startswith("brain listening on "):
                        self.url = line.split()[-1]
                        ready.set()

        def read_stderr() -> None:
            assert self.proc.stderr is not None
            with self.proc.stderr:
                for line in self.proc.stderr:
                    self.logs.append(line.rstrip())

        self.readers = [
            threading.Thread(target=read_stdout, daemon=True),
            threading.Thread(target=read_stderr, daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        if not ready.wait(60):
            self.proc.kill()
            raise RuntimeError("brain serve did not start:\n" + "\n".join(self.logs))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self.readers:
            reader.join(10)
