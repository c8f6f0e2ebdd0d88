"""The foundation path end to end: Python client -> gRPC (or the framed socket) -> real
sidecar -> real HTTP upstream.

Every test that calls through ``client_for`` runs twice: with the Dispatch stream on gRPC
and on the sidecar's frames socket, so both transports keep the client's promises
(exactly one result, cancellation, reconnect, 10,000 concurrent calls, drain). They run
on uvloop, as the brain does (``conftest.pytest_asyncio_loop_factories``)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import grpc
import grpc.aio
import pytest
from aiohttp import web
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from brain import SidecarClient, SidecarUnavailable, Status
from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc

from harness import SidecarProcess, Upstream, scrape, sidecar_binary

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]


def tools_yaml(base: str) -> str:
    return f"""
defaults:
  timeout: 10s
tools:
  - name: weather
    description: Current weather for a city.
    egress: {{allow: [127.0.0.0/8]}}
    input_schema:
      type: object
      properties:
        city: {{type: string, minLength: 1}}
        units: {{enum: [c, f]}}
        days: {{type: integer, minimum: 1, maximum: 7}}
      required: [city]
      additionalProperties: false
    output_schema:
      type: object
      properties: {{city: {{type: string}}, temp: {{type: number}}}}
      required: [city, temp]
    request:
      url: {base}/weather/{{city}}
      query: {{units: "{{units}}", days: "{{days}}"}}
  - name: echo
    description: Echo the arguments back.
    # Generous: the 10,000-call test measures exactly-one-result, not how fast the
    # in-process Python upstream answers on a loaded machine.
    timeout: 120s
    egress: {{allow: [127.0.0.0/8]}}
    input_schema: {{type: object}}
    request: {{method: POST, url: {base}/echo}}
  - name: broken
    description: Upstream answers with the wrong shape.
    egress: {{allow: [127.0.0.0/8]}}
    input_schema: {{type: object}}
    output_schema: {{type: object, required: [answer]}}
    request: {{url: {base}/broken}}
  - name: slow
    description: Upstream that takes its time.
    egress: {{allow: [127.0.0.0/8]}}
    input_schema: {{type: object}}
    request: {{url: {base}/slow}}
  - name: limited
    description: Five per second per agent.
    egress: {{allow: [127.0.0.0/8]}}
    input_schema: {{type: object}}
    request: {{url: {base}/limited}}
    rate_limits: [{{key: agent, rate: 5, per: 1s}}]
  - name: limited_wait
    description: Ten per second, one at a time, callers wait.
    egress: {{allow: [127.0.0.0/8]}}
    input_schema: {{type: object}}
    request: {{url: {base}/limited}}
    rate_limits: [{{key: agent, rate: 10, per: 1s, burst: 1, on_limit: wait}}]
"""


@pytest.fixture(params=["grpc", "frames"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stack(upstream: Upstream, start_sidecar: Start) -> tuple[Upstream, SidecarProcess]:
    async def weather(request: web.Request) -> web.StreamResponse:
        city = request.match_info.get("city") or request.path.rsplit("/", 1)[1]
        return web.json_response(
            {"city": city, "temp": 21.5, "units": request.query.get("units", "c")}
        )

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response({"got": await request.json()})

    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response({})

    upstream.route("GET", "/weather/Oslo", weather)
    upstream.route("GET", "/weather/São Paulo", weather)
    upstream.route("POST", "/echo", echo)
    upstream.json("GET", "/broken", {"answer_is_missing": True})
    upstream.route("GET", "/slow", slow)
    upstream.json("GET", "/limited", {"ok": True})
    return upstream, start_sidecar(tools_yaml(upstream.url))


async def test_round_trip_via_dispatch_and_invoke(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    upstream, sidecar = stack
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    client = client_for(sidecar.unix_target)
    r = await client.call("weather", {"city": "Oslo", "units": "f"}, agent_id="a1")
    assert r.status is Status.OK, r
    assert r.json() == {"city": "Oslo", "temp": 21.5, "units": "f"}
    assert r.upstream_status == 200
    assert r.timing.attempts == 1
    assert r.timing.total_us >= r.timing.upstream_us > 0

    r = await client.invoke("weather", {"city": "São Paulo"}, agent_id="a1")
    assert r.status is Status.OK, r
    assert r.json()["city"] == "São Paulo"  # percent-encoded on the way, decoded upstream

    r = await client.call("echo", b'{"n": 12345678901234567, "x": [1, 2.5]}')
    assert r.status is Status.OK
    # Integers survive exactly: JSON travels as bytes, never as protobuf doubles.
    assert r.result_bytes == b'{"got": {"n": 12345678901234567, "x": [1, 2.5]}}'
    assert upstream.requests["/weather/Oslo"] == 1


async def test_invalid_arguments_report_every_violation_and_skip_upstream(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    upstream, sidecar = stack
    client = client_for(sidecar.unix_target)
    r = await client.call("weather", {"units": "kelvin", "days": 0, "extra": 1})
    assert r.status is Status.INVALID_ARGUMENTS
    paths = {v.instance_path for v in r.violations}
    assert {"", "/units", "/days"} <= paths, r.violations
    assert any("city" in v.message for v in r.violations)
    assert all(v.schema_path for v in r.violations)
    assert "city" in r.error
    assert sum(upstream.requests.values()) == 0


async def test_response_failing_output_schema_is_invalid_response(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    upstream, sidecar = stack
    r = await client_for(sidecar.unix_target).call("broken", {})
    assert r.status is Status.INVALID_RESPONSE
    assert r.upstream_status == 200
    assert any("answer" in v.message for v in r.violations)
    assert r.result_bytes == b""  # the bad document does not reach the agent
    assert upstream.requests["/broken"] == 1


async def test_bad_requests_get_clear_statuses_and_the_sidecar_keeps_serving(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    _, sidecar = stack
    client = client_for(sidecar.unix_target)
    unknown, malformed, not_object, deep = await asyncio.gather(
        client.call("no_such_tool", {}),
        client.call("echo", b'{"a": '),
        client.call("echo", b"[1, 2, 3]"),
        client.call("echo", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    )
    assert (unknown.status, malformed.status, not_object.status, deep.status) == (
        Status.UNKNOWN_TOOL,
        Status.INVALID_ARGUMENTS,
        Status.INVALID_ARGUMENTS,
        Status.INVALID_ARGUMENTS,
    )
    assert "no_such_tool" in unknown.error
    assert "not valid JSON" in malformed.error
    assert "an array" in not_object.error
    assert "deeper than 64" in deep.error
    ok = await client.call("weather", {"city": "Oslo"})
    assert ok.status is Status.OK
    assert sidecar.proc is not None
    assert sidecar.proc.poll() is None


async def test_envelope_errors_on_a_raw_stream(
    stack: tuple[Upstream, SidecarProcess],
) -> None:
    """Empty and duplicate call ids are refused; cancelling an unknown id is a no-op."""
    _, sidecar = stack
    async with grpc.aio.insecure_channel(sidecar.tcp_target) as channel:
        stream = pb_grpc.DispatcherStub(channel).Dispatch(metadata=sidecar.auth_metadata)
        slow = pb.ToolCall(call_id="x", tool="slow", arguments=b"{}", timeout_ms=300)
        await stream.write(
            pb.DispatchFrame(
                calls=[pb.ToolCall(call_id="", tool="echo"), slow, slow],
                cancel_call_ids=["never-sent"],
            )
        )
        await stream.done_writing()
        results = [r async for frame in stream for r in frame.results]
    statuses = sorted((r.call_id, r.status) for r in results)
    assert statuses == [
        ("", pb.STATUS_INVALID_REQUEST),
        ("x", pb.STATUS_TIMEOUT),
        ("x", pb.STATUS_INVALID_REQUEST),
    ]


async def test_rate_limit_per_agent_rejects_with_retry_after(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    upstream, sidecar = stack
    client = client_for(sidecar.unix_target)
    burst = await asyncio.gather(*(client.call("limited", agent_id="greedy") for _ in range(12)))
    ok = [r for r in burst if r.status is Status.OK]
    limited = [r for r in burst if r.status is Status.RATE_LIMITED]
    assert len(ok) == 5, burst
    assert len(limited) == 7
    assert all(0 < r.retry_after_ms <= 1000 for r in limited)
    assert {r.limited_by for r in limited} == {"pod:limited:greedy"}
    assert "pod limit on limited:greedy" in limited[0].error
    assert upstream.requests["/limited"] == 5
    other = await client.call("limited", agent_id="polite")
    assert other.status is Status.OK


async def test_rate_limit_wait_mode_delays_instead_of_rejecting(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    _, sidecar = stack
    client = client_for(sidecar.unix_target)
    started = time.monotonic()
    results = await asyncio.gather(
        *(client.call("limited_wait", agent_id="a", timeout=5) for _ in range(5))
    )
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == [Status.OK] * 5
    # One permit every 100 ms after the first: the last call waited ~400 ms.
    assert elapsed >= 0.35
    assert max(r.timing.queued_us for r in results) >= 350_000
    # A deadline too short to wait for the next permit is refused at once.
    await client.call("limited_wait", agent_id="b")
    short = await client.call("limited_wait", agent_id="b", timeout=0.02)
    assert short.status is Status.RATE_LIMITED


async def test_slow_upstream_times_out_and_the_request_is_dropped(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    upstream, sidecar = stack
    client = client_for(sidecar.unix_target)
    started = time.monotonic()
    r = await client.call("slow", timeout=0.3)
    elapsed = time.monotonic() - started
    assert r.status is Status.TIMEOUT, r
    assert "300ms" in r.error
    assert 0.3 <= elapsed < 0.3 + 1.5
    assert upstream.wait_for(lambda: upstream.disconnects["/slow"] == 1)


async def test_cancelling_the_python_task_cancels_the_upstream_request(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    upstream, sidecar = stack
    client = client_for(sidecar.unix_target)
    task = asyncio.create_task(client.call("slow", timeout=20))
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.requests["/slow"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.disconnects["/slow"] == 1)
    assert client.pending == 0


async def test_ten_thousand_concurrent_calls_each_get_exactly_one_result(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    upstream, sidecar = stack
    client = client_for(sidecar.unix_target)
    n = 10_000
    results = await asyncio.gather(
        *(client.call("echo", {"i": i}, agent_id=f"agent-{i % 100}", timeout=60) for i in range(n))
    )
    failed = Counter((r.status, r.error) for r in results if r.status is not Status.OK)
    assert not failed, failed.most_common(5)
    assert [r.json()["got"]["i"] for r in results] == list(range(n))
    assert len({r.call_id for r in results}) == n
    assert upstream.requests["/echo"] == n
    assert client.pending == 0
    # Calls made in the same loop iteration share frames.
    assert client.frames_sent < n / 10


async def test_overloaded_past_the_inflight_bound_with_bounded_memory(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    release = upstream.gate()

    async def held(_: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"ok": True})

    upstream.route("GET", "/slow", held)
    # The held calls must outlast the rounds below, which take tens of seconds on a loaded
    # machine: with the default 10 s they time out, their slots free up, the breaker opens
    # on the timeouts and later calls get CIRCUIT_OPEN instead of OVERLOADED.
    config = tools_yaml(upstream.url).replace(
        "defaults:\n  timeout: 10s", "defaults:\n  timeout: 300s"
    )
    assert "timeout: 300s" in config
    sidecar = start_sidecar(config, "--max-inflight", "200")
    client = client_for(sidecar.unix_target)

    tasks = [asyncio.create_task(client.call("slow", timeout=300)) for _ in range(200)]
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.requests["/slow"] == 200)
    before = sidecar.rss_bytes()
    rounds = []
    for _ in range(8):
        refused = await asyncio.gather(*(client.call("slow", timeout=30) for _ in range(10_000)))
        assert {r.status for r in refused} == {Status.OVERLOADED}
        assert "in-flight" in refused[0].error
        rounds.append(sidecar.rss_bytes())
    # No queue grows. Each round's RSS lands somewhere on the allocator's plateau (up to
    # ~25 MB apart from run to run, depending on how many refusals were in flight at its
    # peak), so the last three rounds are compared with the highest of the first five: a
    # 1 KB leak per call would add 10 MB a round, 30 MB over the last three.
    later_growth = max(rounds[5:]) - max(rounds[:5])
    assert later_growth < 16 * 1024 * 1024, (
        f"RSS grew by {later_growth / 1e6:.1f} MB: {[r // 1_000_000 for r in rounds]} MB"
    )
    assert max(rounds) - before < 64 * 1024 * 1024
    upstream.open(release)
    held_results = await asyncio.gather(*tasks)
    assert {r.status for r in held_results} == {Status.OK}
    assert upstream.requests["/slow"] == 200


async def test_sidecar_restart_fails_pending_calls_then_reconnects(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    upstream, sidecar = stack
    client = client_for(sidecar.unix_target, backoff_initial=0.05, backoff_max=0.5)
    assert (await client.call("weather", {"city": "Oslo"})).ok
    pending = [asyncio.create_task(client.call("slow", timeout=20)) for _ in range(20)]
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.requests["/slow"] == 20)

    sidecar.kill()  # a crash: no drain
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(o, SidecarUnavailable) for o in outcomes), outcomes
    assert "broke" in str(outcomes[0])

    sidecar.start()
    r = await client.call("weather", {"city": "Oslo"}, timeout=10)
    assert r.status is Status.OK, r
    assert client.streams_opened == 2


async def test_sigterm_drains_calls_in_flight_and_exits_zero(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    async def slowish(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.json_response({"ok": True})

    upstream.route("GET", "/slow", slowish)
    sidecar = start_sidecar(tools_yaml(upstream.url), "--drain-timeout", "10s")
    client = client_for(sidecar.unix_target)
    calls = [asyncio.create_task(client.call("slow")) for _ in range(50)]
    assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.requests["/slow"] == 50)
    code = await asyncio.to_thread(sidecar.terminate)
    assert code == 0
    assert {r.status for r in await asyncio.gather(*calls)} == {Status.OK}
    assert "draining" in sidecar.log_text()
    assert not sidecar.socket.exists()


async def test_list_tools_health_and_tcp(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    _, sidecar = stack
    client = client_for(sidecar.tcp_target, auth_token=sidecar.auth_token)
    tools = {t.name: t for t in await client.list_tools()}
    assert set(tools) == {
        "weather",
        "echo",
        "broken",
        "slow",
        "limited",
        "limited_wait",
    }
    assert tools["weather"].input_schema["required"] == ["city"]
    assert tools["weather"].output_schema is not None
    assert tools["limited"].rate_limits[0].key == "agent"
    assert tools["limited"].rate_limits[0].scope == "pod"
    assert tools["limited"].rate_limits[0].rate == 5
    assert (await client.call("weather", {"city": "Oslo"})).ok
    async with grpc.aio.insecure_channel(sidecar.tcp_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "dispatch.v1.Dispatcher"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(stack: tuple[Upstream, SidecarProcess]) -> None:
    _, sidecar = stack
    with grpc.insecure_channel(sidecar.tcp_target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"dispatch.v1.Dispatcher", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(db)
        method = pool.FindServiceByName("dispatch.v1.Dispatcher").FindMethodByName("Dispatch")
        assert method.client_streaming
        assert method.server_streaming


async def test_metrics_count_the_calls_made(
    stack: tuple[Upstream, SidecarProcess], client_for: MakeClient
) -> None:
    _, sidecar = stack
    client = client_for(sidecar.unix_target)
    await asyncio.gather(*(client.call("weather", {"city": "Oslo"}) for _ in range(7)))
    await client.call("weather", {})
    await client.call("nope", {})
    samples = await asyncio.to_thread(scrape, sidecar.metrics_port)
    calls = samples["sidecar_tool_calls_total"]
    assert calls[(("status", "ok"), ("tool", "weather"))] == 7
    assert calls[(("status", "invalid_arguments"), ("tool", "weather"))] == 1
    assert calls[(("status", "unknown_tool"), ("tool", "_unknown"))] == 1
    durations = samples["sidecar_tool_call_duration_seconds_count"]
    assert durations[(("tool", "weather"),)] == 8
    assert samples["sidecar_inflight_calls"][()] == 0
    assert samples["sidecar_streams_active"][()] == 1


def test_check_config_names_the_tool_and_field(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    broken = tmp_path / "tools.yaml"
    broken.write_text(
        tools_yaml("http://127.0.0.1:9").replace(
            "url: http://127.0.0.1:9/weather/{city}",
            "url: http://127.0.0.1:9/weather/{town}",
        )
    )
    proc = subprocess.run(
        [str(sidecar_binary()), "--config", str(broken), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert 'tool "weather"' in proc.stderr
    assert "request.url" in proc.stderr
    assert "{town}" in proc.stderr

    good = tmp_path / "good.yaml"
    good.write_text(tools_yaml("http://127.0.0.1:9"))
    proc = subprocess.run(
        [str(sidecar_binary()), "--config", str(good), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 tools" in proc.stdout
