"""Operating the sidecar: tracing, hot reload, graceful drain."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from brain import SidecarClient, Status
from hostile.streams import wait_until

from harness import SidecarProcess, Upstream, replace_file, scrape, tool, tools_file

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]


async def test_traceparent_continues_into_the_upstream_request(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.json("GET", "/x", {"ok": True})
    sidecar = start_sidecar(tools_file(tool("x", f"{upstream.url}/x")))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = f"00-{trace_id}-00f067aa0ba902b7-01"
    r = await client_for(sidecar.unix_target).call("x", metadata={"traceparent": incoming})
    assert r.ok
    sent = upstream.headers[-1]["traceparent"]
    version, sent_trace, parent, flags = sent.split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "01")
    assert parent != "00f067aa0ba902b7"  # the sidecar's hop is a span of its own


async def test_hot_reload_applies_new_limits_and_rejects_broken_files(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.json("GET", "/x", {"ok": True})

    def config(rate: int) -> str:
        limit = {"key": "agent", "rate": rate, "per": "1h"}
        return tools_file(tool("x", f"{upstream.url}/x", rate_limits=[limit]))

    sidecar = start_sidecar(config(1))
    client = client_for(sidecar.unix_target)
    assert (await client.call("x", agent_id="a")).ok
    assert (await client.call("x", agent_id="a")).status is Status.RATE_LIMITED

    replace_file(sidecar.config_path, config(100))
    await wait_for_reloads(sidecar, "success", 1)
    results = [await client.call("x", agent_id="a") for _ in range(5)]
    assert {r.status for r in results} == {Status.OK}

    replace_file(sidecar.config_path, config(100).replace('"rate": 100', '"rate": 0'))
    await wait_for_reloads(sidecar, "rejected", 1)
    assert (await client.call("x", agent_id="a")).ok  # the previous config is in force
    assert "config reload rejected" in sidecar.log_text()
    assert "rate_limits[0].rate" in sidecar.log_text()

    # SIGHUP reloads at once, even when nothing changed.
    assert sidecar.proc is not None
    sidecar.proc.send_signal(signal.SIGHUP)
    await wait_for_reloads(sidecar, "rejected", 2)


async def test_a_reload_naming_a_device_or_an_oversized_file_is_rejected_unread(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient, tmp_path: Path
) -> None:
    """A tools file edited to take a secret from ``/dev/zero`` (or a schema from a log
    file of 20 MB): the reload is rejected with an error naming the file, and nothing is
    read into memory: the watcher reads every named file on each check, and its unbounded
    read took `338e16e`'s sidecar to 1 GB of RSS in 0.7 s at start, stopped only by a 3 GB
    address-space limit (`ulimit -v`); in a pod, the memory limit's OOM kill."""
    upstream.json("GET", "/x", {"ok": True})
    sidecar = start_sidecar(tools_file(tool("x", f"{upstream.url}/x")))
    client = client_for(sidecar.unix_target)
    assert (await client.call("x")).ok
    before = sidecar.rss_bytes()

    endless = {"headers": {"X-Key": "${file:/dev/zero}"}}
    replace_file(sidecar.config_path, tools_file(tool("x", f"{upstream.url}/x", request=endless)))
    await wait_for_reloads(sidecar, "rejected", 1)
    assert "/dev/zero: larger than 16384 bytes" in sidecar.log_text()

    log = tmp_path / "app.log"
    log.write_bytes(b"x" * (20 << 20))
    replace_file(
        sidecar.config_path,
        tools_file(tool("x", f"{upstream.url}/x"), schema_files=[{"file": str(log)}]),
    )
    await wait_for_reloads(sidecar, "rejected", 2)
    assert f"{log}: larger than 16777216 bytes" in sidecar.log_text()

    assert (await client.call("x")).ok  # the previous config is in force
    grown = sidecar.rss_bytes() - before
    assert grown < 8 << 20, f"RSS grew by {grown >> 20} MiB"


async def wait_for_reloads(sidecar: SidecarProcess, result: str, count: int) -> None:
    for _ in range(100):
        samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
        reloads = samples.get("sidecar_config_reloads_total", {})
        if reloads.get((("result", result),), 0) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {result} reload #{count}:\n{sidecar.log_text()}")


async def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    gate = upstream.gate()

    async def slow(_: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"ok": True})

    upstream.route("GET", "/slow", slow)
    sidecar = start_sidecar(
        tools_file(tool("slow", f"{upstream.url}/slow")), "--drain-timeout", "20s"
    )
    client = client_for(sidecar.unix_target)
    in_flight = [asyncio.create_task(client.call("slow", timeout=30)) for _ in range(50)]
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.requests["/slow"] == 50)

    assert sidecar.proc is not None
    started = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.health_port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    refused = await asyncio.gather(*(client.call("slow") for _ in range(5)))
    assert {r.status for r in refused} == {Status.DRAINING}
    assert upstream.requests["/slow"] == 50

    upstream.open(gate)
    done = await asyncio.gather(*in_flight)
    assert {r.status for r in done} == {Status.OK}
    code = await asyncio.to_thread(sidecar.proc.wait, 20)
    assert code == 0
    assert time.monotonic() - started < 20


async def test_drain_timeout_cancels_what_is_left_and_still_exits_cleanly(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    async def never(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)
        return web.json_response({})

    upstream.route("GET", "/never", never)
    sidecar = start_sidecar(
        tools_file(tool("never", f"{upstream.url}/never")), "--drain-timeout", "1s"
    )
    client = client_for(sidecar.unix_target)
    calls = [asyncio.create_task(client.call("never", timeout=30)) for _ in range(10)]
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.requests["/never"] == 10)
    started = time.monotonic()
    code = await asyncio.to_thread(sidecar.terminate, 15)
    assert code == 0
    assert time.monotonic() - started < 8
    results = await asyncio.gather(*calls)
    assert {r.status for r in results} == {Status.CANCELLED}
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.disconnects["/never"] == 10)
    assert "drain timeout passed" in sidecar.log_text()


async def test_health_port_serves_probes_without_a_token(
    upstream: Upstream, start_sidecar: Start
) -> None:
    sidecar = start_sidecar(tools_file(tool("x", f"{upstream.url}/x")))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Only health lives there: no tool calls on the probe port.
        from brain._proto.dispatch.v1 import dispatch_pb2 as pb
        from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.DispatcherStub(channel).ListTools(pb.ListToolsRequest())
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """A minimal OTLP/gRPC trace collector that keeps what it receives."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def traced_sidecar(start_sidecar: Start, upstream: Upstream, port: int) -> SidecarProcess:
    """A sidecar with one tool, ``x`` (``upstream``'s ``/x``), exporting its spans to
    the OTLP collector on ``port``."""
    upstream.json("GET", "/x", {"ok": True})
    return start_sidecar(
        tools_file(tool("x", f"{upstream.url}/x")),
        "--otlp-endpoint",
        f"http://127.0.0.1:{port}",
    )


async def test_otlp_exports_a_span_per_call_in_the_callers_trace(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        sidecar = traced_sidecar(start_sidecar, upstream, port)
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        parent = "b7ad6b7169203331"
        r = await client_for(sidecar.unix_target).call(
            "x", agent_id="a9", metadata={"traceparent": f"00-{trace_id}-{parent}-01"}
        )
        assert r.ok
        # The upstream request carries the sidecar's span as its parent.
        sent = upstream.headers[-1]["traceparent"].split("-")
        assert sent[1] == trace_id
        # Spans are flushed on shutdown at the latest.
        assert await asyncio.to_thread(sidecar.terminate) == 0
        calls = [s for s in collector.spans if s.name == "tool_call"]
        assert len(calls) == 1, collector.spans
        span = calls[0]
        assert span.trace_id.hex() == trace_id
        assert span.parent_span_id.hex() == parent
        assert span.span_id.hex() == sent[2]
        attributes = {a.key: a.value.string_value or a.value.int_value for a in span.attributes}
        assert attributes["tool"] == "x"
        assert attributes["status"] == "ok"
        assert attributes["attempts"] == 1
        assert attributes["agent_id"] == "a9"
    finally:
        await server.stop(None)


async def test_a_trace_collector_that_never_answers_slows_no_call_and_holds_no_exit(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    """The collector accepts connections and reads nothing back (a frozen process, a
    black-holed address): calls go on as usual, spans past the processor's queue are
    dropped, and at exit the spans not yet exported get a few seconds, not the exporter's
    timeout per batch (`338e16e`'s binary took 20 s to exit here, and a minute after
    40,000 calls)."""
    collector = socket.socket()
    collector.bind(("127.0.0.1", 0))
    collector.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(collector.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        sidecar = traced_sidecar(start_sidecar, upstream, collector.getsockname()[1])
        client = client_for(sidecar.unix_target)
        # Under the processor's queue (2,048 spans), over one export batch (512): an
        # export is stuck on the collector and the rest wait for the flush at exit.
        for _ in range(3):
            results = await asyncio.gather(*(client.call("x", timeout=5) for _ in range(250)))
            assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        # The exporter connects for its first batch (at 512 spans, or 5 s at most).
        assert await asyncio.to_thread(wait_until, lambda: bool(held), 10.0), "no export began"
        started = time.monotonic()
        assert await asyncio.to_thread(sidecar.terminate, 60) == 0
        took = time.monotonic() - started
        assert took < 15, f"exit took {took:.1f} s on a collector that never answers"
        assert "exiting without them" in sidecar.log_text()
    finally:
        collector.close()
        for conn in held:
            conn.close()
