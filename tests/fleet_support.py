"""What the fleet tests share: waiting for a fleet to form, a tool whose upstream
announces a spent quota."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from harness import SidecarProcess, Upstream, scrape, tool


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
