"""Any standard gRPC client works over the unix socket, with its defaults.

gRPC clients put the socket path in ``:authority`` (gRPC core percent-encodes it, grpcurl
and grpc-java send it raw); the sidecar serves such requests (see
``sidecar-rs/vendor/README.md``). grpcurl comes from the Go module proxy into ``.tools/``
at a pinned version.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest

from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc

from harness import REPO, SidecarProcess, Upstream, tool, tools_file


def grpcurl() -> Path:
    """grpcurl, which ``make test`` installs into .tools/ at the version the Makefile pins."""
    path = REPO / ".tools" / "grpcurl"
    if not path.exists():
        pytest.fail("grpcurl is not installed in .tools/ (make test installs it)")
    return path


@pytest.fixture
def sidecar(upstream: Upstream, start_sidecar) -> SidecarProcess:  # type: ignore[no-untyped-def]
    upstream.json("GET", "/x", {"ok": True})
    sidecar: SidecarProcess = start_sidecar(tools_file(tool("x", f"{upstream.url}/x")))
    return sidecar


def test_a_plain_grpcio_channel_works_over_the_socket(sidecar: SidecarProcess) -> None:
    """No channel options: gRPC core sends ``:authority`` as the percent-encoded path."""
    with grpc.insecure_channel(sidecar.unix_target) as channel:
        stub = pb_grpc.DispatcherStub(channel)
        tools = stub.ListTools(pb.ListToolsRequest(), timeout=10)
        assert [t.name for t in tools.tools] == ["x"]
        result = stub.Invoke(pb.ToolCall(call_id="1", tool="x", arguments=b"{}"), timeout=10)
        assert result.status == pb.STATUS_OK, result
        frames = stub.Dispatch(
            iter([pb.DispatchFrame(calls=[pb.ToolCall(call_id="d1", tool="x")])]), timeout=10
        )
        results = [r for frame in frames for r in frame.results]
        assert [(r.call_id, r.status) for r in results] == [("d1", pb.STATUS_OK)]


@pytest.mark.timeout(900)
def test_grpcurl_works_over_the_socket(sidecar: SidecarProcess) -> None:
    """grpcurl over the socket through server reflection, sending the raw socket path as
    ``:authority`` as grpc-java does. (grpcurl's own ``-unix`` flag fails to dial in
    v1.9.3, "dial tcp ... missing port", so the socket is named as a ``unix://`` target.)"""
    binary = grpcurl()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), "-plaintext", "-authority", str(sidecar.socket), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )

    target = f"unix://{sidecar.socket}"
    listed = run(target, "list")
    assert listed.returncode == 0, listed.stderr
    assert "dispatch.v1.Dispatcher" in listed.stdout.split()
    call = json.dumps({"callId": "g1", "tool": "x", "arguments": "e30="})  # "{}"
    invoked = run("-d", call, target, "dispatch.v1.Dispatcher/Invoke")
    assert invoked.returncode == 0, invoked.stderr
    reply = json.loads(invoked.stdout)
    assert reply["callId"] == "g1"
    assert reply["status"] == "STATUS_OK", reply
    health = run(target, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "SERVING"
