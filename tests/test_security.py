"""Credential isolation, the egress guard and brain->sidecar authentication."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from aiohttp import web

from brain import SidecarClient, SidecarUnavailable, Status
from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc

from harness import SidecarProcess, Upstream, scrape, sidecar_binary, tool, tools_file

Start = Callable[..., SidecarProcess]
MakeClient = Callable[..., SidecarClient]

ENV_KEY = "sk-env-0123456789abcdef"
FILE_KEY = "sk-file-fedcba9876543210"


async def test_secrets_reach_the_upstream_and_nothing_else(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient, tmp_path: Path
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(FILE_KEY + "\n")

    async def leaky(request: web.Request) -> web.StreamResponse:
        # A careless upstream that echoes credentials back, in errors and in data.
        auth = request.headers.get("Authorization", "")
        token = request.query.get("token", "")
        if request.path.endswith("fail"):
            return web.json_response({"error": f"bad key {auth} / {token}"}, status=401)
        return web.json_response({"you_sent": auth, "token": token})

    upstream.route("GET", "/ok", leaky)
    upstream.route("GET", "/fail", leaky)
    secret_request = {
        "headers": {"Authorization": "Bearer ${env:TANDEM_TEST_KEY}"},
        "query": {"token": "${file:" + str(key_file) + "}"},
    }
    sidecar = start_sidecar(
        tools_file(
            tool("ok", f"{upstream.url}/ok", request=secret_request),
            tool("fail", f"{upstream.url}/fail", request=secret_request),
        ),
        env={"TANDEM_TEST_KEY": ENV_KEY, "RUST_LOG": "debug"},
    )
    client = client_for(sidecar.unix_target)
    ok = await client.call("ok", agent_id="a1")
    fail = await client.call("fail", agent_id="a1")
    tools = await client.list_tools()

    # The upstream got both credentials...
    sent = [h for h in upstream.headers if h.get("authorization")]
    assert {h["authorization"] for h in sent} == {f"Bearer {ENV_KEY}"}
    assert len(sent) == 2
    assert ok.status is Status.OK
    # ...and nothing that leaves the sidecar carries them.
    assert ok.json() == {"you_sent": "Bearer [redacted]", "token": "[redacted]"}
    assert fail.status is Status.UPSTREAM_ERROR
    assert fail.upstream_status == 401
    metrics_text = str(await asyncio.to_thread(scrape, sidecar.metrics_port))
    listed = "".join(str(t) for t in tools)
    for leak_target in (
        ok.result_bytes.decode(),
        fail.result_bytes.decode(),
        ok.error,
        fail.error,
        sidecar.log_text(),
        metrics_text,
        listed,
    ):
        assert ENV_KEY not in leak_target
        assert FILE_KEY not in leak_target
    assert "[redacted]" in fail.result_bytes.decode()


async def test_rotated_secret_file_is_picked_up_by_reload(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient, tmp_path: Path
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("first-secret-value")

    async def whoami(request: web.Request) -> web.StreamResponse:
        return web.json_response({"len": len(request.headers.get("X-Key", ""))})

    upstream.route("GET", "/who", whoami)
    sidecar = start_sidecar(
        tools_file(
            tool(
                "who",
                f"{upstream.url}/who",
                request={"headers": {"X-Key": f"${{file:{key_file}}}"}},
            )
        )
    )
    client = client_for(sidecar.unix_target)
    assert (await client.call("who")).json() == {"len": len("first-secret-value")}
    key_file.write_text("the-rotated-secret-value")
    for _ in range(50):
        await asyncio.sleep(0.1)
        if (await client.call("who")).json() == {"len": len("the-rotated-secret-value")}:
            break
    else:
        pytest.fail("the rotated secret was never used")
    assert upstream.headers[-1]["x-key"] == "the-rotated-secret-value"


@pytest.mark.parametrize(
    "city",
    [
        "../admin",
        "%2e%2e/admin",
        "%2E%2E",
        "..",
        "a/b",
        "user@evil.com",
        "evil.com:8080",
        "//evil.com",
    ],
)
async def test_path_placeholders_cannot_escape_their_segment(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient, city: str
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    sidecar = start_sidecar(
        tools_file(tool("weather", f"{upstream.url}/weather/{{city}}", input_schema=schema))
    )
    r = await client_for(sidecar.unix_target).call("weather", {"city": city})
    assert r.status is Status.EGRESS_DENIED, r
    assert "path segment" in r.error
    assert sum(upstream.requests.values()) == 0


async def test_hostnames_resolving_to_private_addresses_are_refused(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.json("GET", "/x", {"ok": True})
    sidecar = start_sidecar(
        tools_file(
            # "localhost" resolves to 127.0.0.1: refused without an allowlist...
            tool("sneaky", f"http://localhost:{upstream.port}/x", loopback=False),
            # ...and allowed with one.
            tool("allowed", f"http://localhost:{upstream.port}/x"),
        )
    )
    client = client_for(sidecar.unix_target)
    r = await client.call("sneaky")
    assert r.status is Status.EGRESS_DENIED, r
    assert "localhost" in r.error
    assert upstream.requests["/x"] == 0
    assert (await client.call("allowed")).ok
    assert upstream.requests["/x"] == 1


def test_private_ip_literals_are_config_errors(tmp_path: Path) -> None:
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:9/x",
        "http://[::1]/x",
    ):
        config = tmp_path / "tools.yaml"
        config.write_text(tools_file(tool("meta", url, loopback=False)))
        proc = subprocess.run(
            [str(sidecar_binary()), "--config", str(config), "--check-config"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode != 0, url
        assert 'tool "meta": request.url' in proc.stderr
        assert "egress.allow" in proc.stderr


async def test_redirects_are_off_by_default_and_rechecked_when_on(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    async def to_metadata(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def to_local(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{upstream.url}/target")

    upstream.route("GET", "/to-metadata", to_metadata)
    upstream.route("GET", "/to-local", to_local)
    upstream.json("GET", "/target", {"arrived": True})
    sidecar = start_sidecar(
        tools_file(
            tool("no_follow", f"{upstream.url}/to-local"),
            tool("follow_local", f"{upstream.url}/to-local", follow_redirects=2),
            tool("follow_metadata", f"{upstream.url}/to-metadata", follow_redirects=2),
        )
    )
    client = client_for(sidecar.unix_target)
    r = await client.call("no_follow")
    assert r.status is Status.UPSTREAM_ERROR
    assert r.upstream_status == 302
    assert upstream.requests["/target"] == 0
    assert (await client.call("follow_local")).json() == {"arrived": True}
    r = await client.call("follow_metadata", timeout=5)
    assert r.status is Status.EGRESS_DENIED, r
    assert "169.254.169.254" in r.error


async def test_tcp_requires_the_token_and_the_socket_is_private(
    upstream: Upstream, start_sidecar: Start, client_for: MakeClient
) -> None:
    upstream.json("GET", "/x", {"ok": True})
    sidecar = start_sidecar(tools_file(tool("x", f"{upstream.url}/x")))
    assert stat.S_IMODE(os.stat(sidecar.socket).st_mode) == 0o600

    async with grpc.aio.insecure_channel(sidecar.tcp_target) as channel:
        stub = pb_grpc.DispatcherStub(channel)
        call = pb.ToolCall(call_id="1", tool="x", arguments=b"{}")
        for metadata in ((), (("authorization", "Bearer wrong-token-0123456789"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Invoke(call, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await stub.Invoke(call, metadata=sidecar.auth_metadata)
        assert reply.status == pb.STATUS_OK

    anonymous = client_for(sidecar.tcp_target, backoff_max=0.2)
    with pytest.raises(SidecarUnavailable, match="UNAUTHENTICATED"):
        await anonymous.invoke("x")
    authed = client_for(sidecar.tcp_target, auth_token=sidecar.auth_token)
    assert (await authed.call("x")).ok
    assert upstream.requests["/x"] == 2


def test_tcp_without_a_token_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "tools.yaml"
    config.write_text(tools_file(tool("x", "http://127.0.0.1:9/x")))
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_AUTH_TOKEN"}
    proc = subprocess.run(
        [str(sidecar_binary()), "--config", str(config), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode != 0
    assert "without authentication" in proc.stderr
