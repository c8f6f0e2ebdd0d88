"""What the fleet tests share: waiting for a fleet to form and to subscribe, waiting for
a hold to reach a sidecar, a tool whose upstream announces a spent quota."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from brain import SidecarClient, Status, ToolResult

from harness import RedisServer, SidecarProcess, Upstream, scrape, tool


async def wait_live(sidecar: SidecarProcess, count: int) -> None:
    for _ in range(100):
        samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
        if samples.get("sidecar_fleet_live_sidecars", {}).get((), 0) == count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fleet never saw {count} live sidecars")


def quota_tool(upstream: Upstream, reset_s: int) -> tuple[dict[str, Any], list[float]]:
    """A tool whose upstream announces, on its first call only, that its quota is spent
    for `reset_s`: the tool, `q`, and the upstream's arrival times."""
    times: list[float] = []

    async def quota(_: web.Request) -> web.StreamResponse:
        times.append(time.monotonic())
        headers = (
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset_s)}
            if len(times) == 1
            else {}
        )
        return web.json_response({"ok": True}, headers=headers)

    upstream.route("GET", "/quota", quota)
    return tool("q", f"{upstream.url}/quota", timeout="5s"), times


async def wait_subscribed(redis: RedisServer, count: int, timeout: float = 10.0) -> None:
    """Until `count` connections follow the throttle channel (one per sidecar)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = await asyncio.to_thread(redis.cli, "PUBSUB", "NUMSUB", "tandem:throttle")
        if int(reply.split()[-1]) == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {count} subscribers to tandem:throttle")


async def wait_held(
    client: SidecarClient, tool_name: str, timeout: float = 10.0, agent_id: str = ""
) -> ToolResult:
    """Calls `tool_name` with a 0.5 s deadline until a hold refuses it (a hold longer than
    the deadline answers RATE_LIMITED at once), up to `timeout`; the refusal."""
    deadline = time.monotonic() + timeout
    while True:
        r = await client.call(tool_name, timeout=0.5, agent_id=agent_id)
        if r.status is Status.RATE_LIMITED or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.1)
