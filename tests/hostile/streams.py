"""What the hostile Dispatch-stream suites share (gRPC: ``test_hostile_stream.py``, the
frames socket: ``test_hostile_frames.py``): an upstream with a slow, a big and a fast
route, the tools file for it, and readers of the sidecar's metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from brain._proto.dispatch.v1 import dispatch_pb2 as pb

from harness import SidecarProcess, Upstream, scrape, tool, tools_file

MIB = 1 << 20
#: A result of about this size comes back from /big.
RESULT_BYTES = 256 * 1024


def serve_slow(upstream: Upstream) -> Upstream:
    """/slow never answers until its client goes away; /big answers ~256 KB at once;
    /fast answers a tiny document at once."""

    async def never(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        return web.json_response({})

    upstream.route("GET", "/slow", never)
    upstream.json("GET", "/big", {"blob": "x" * RESULT_BYTES})
    upstream.json("GET", "/fast", {"ok": True})
    return upstream


def config(upstream: Upstream, **top: Any) -> str:
    """The three tools on ``upstream``; ``top``: more top-level sections."""
    return tools_file(
        tool("slow", f"{upstream.url}/slow", timeout="60s"),
        tool("big", f"{upstream.url}/big"),
        tool("fast", f"{upstream.url}/fast"),
        **top,
    )


def call(call_id: str, name: str) -> pb.ToolCall:
    return pb.ToolCall(call_id=call_id, tool=name, arguments=b"{}", agent_id="hostile")


def gauge(sidecar: SidecarProcess, name: str) -> float:
    return sum(scrape(sidecar.metrics_port).get(name, {}).values())


def answered_calls(sidecar: SidecarProcess, name: str) -> float:
    calls = scrape(sidecar.metrics_port).get("sidecar_tool_calls_total", {})
    return sum(v for labels, v in calls.items() if ("tool", name) in labels)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
