"""Hostile connections to the ports a sidecar opens to the network: metrics, health and
the TCP data plane.

The metrics port is open to every pod (Prometheus scrapes it), kubelet dials the health
port, and an operator may open the data plane on TCP (`--listen host:port`, with a token)
to brains outside the pod. A client that connects and sends nothing, or half a request,
used to hold a file descriptor and memory in the sidecar for good (5,000 such
connections: +60 MiB on the metrics port, +18 MiB on the health port, none ever closed;
1,000 on the TCP data plane: 1,000 descriptors, none ever closed). Each case opens many such
connections from one address, then asserts what the sidecar holds (file descriptors, from
/proc) is bounded by the port's cap per peer while they are open, that a client from another
address (127.0.0.2: any of 127.0.0.0/8 reaches a loopback port) is still served meanwhile,
and that everything is released after the port's deadline.
"""

from __future__ import annotations

import http.client
import resource
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hostile.h2client import H2Client, grpc_message
from hostile.streams import wait_until

from harness import SidecarProcess, scrape, tool, tools_file

Start = Callable[..., SidecarProcess]

#: What the sidecar serves at once from one address on the metrics port
#: (`MAX_SCRAPE_CONNECTIONS_PER_PEER`) and on the health port
#: (`MAX_PROBE_CONNECTIONS_PER_PEER`).
SCRAPE_PER_PEER = 32
PROBE_PER_PEER = 64
#: Where the well-behaved client comes from while the flood holds 127.0.0.1's share.
OTHER_PEER = "127.0.0.2"
#: A metrics connection's time to send a request head (`SCRAPE_HEADER_TIMEOUT`).
SCRAPE_HEADER_TIMEOUT = 10.0
#: A health connection's whole life: `PROBE_CONNECTION_AGE` + `PROBE_CONNECTION_GRACE`.
PROBE_CONNECTION_LIFE = 15.0
#: What the TCP data plane serves at once from one address (`--max-tcp-connections-per-peer`'s
#: default), and the time a connection has to send the HTTP/2 preface (`PREFACE_TIMEOUT`).
GRPC_PER_PEER = 256
PREFACE_TIMEOUT = 10.0
#: Connections each case opens: well past both caps.
FLOOD = 1_000
#: File descriptors the sidecar may open besides the connections under test (its
#: listeners, sockets, the config file being reloaded).
FD_SLACK = 16


def open_fds(sidecar: SidecarProcess) -> int:
    assert sidecar.proc is not None
    return len(list(Path(f"/proc/{sidecar.proc.pid}/fd").iterdir()))


@pytest.fixture(autouse=True)
def descriptors() -> Iterator[None]:
    """Room for the flood in this process and in the sidecar it starts after this (a
    child inherits the limit); the previous limit is restored after each test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 1024
    if hard < wanted:
        pytest.skip(f"the hard limit on open files ({hard}) is under {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextmanager
def connections(port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    """`count` connections to `port`, each having sent `first_bytes` and nothing after."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if first_bytes:
                s.sendall(first_bytes)
            opened.append(s)
        yield opened
    finally:
        for s in opened:
            s.close()


def health_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def health_serving_from(source: str, port: int) -> bool:
    """A health Check over a connection from ``source`` (grpcio cannot pick one)."""
    with H2Client(f"127.0.0.1:{port}", source_address=source) as client:
        stream = client.open("/grpc.health.v1.Health/Check")
        request = health_pb2.HealthCheckRequest(service="").SerializeToString()
        client.send(stream, grpc_message(request), end=True)
        assert client.wait_for(lambda: client.streams[stream].ended, 10)
        answer = client.streams[stream].messages()
        assert client.streams[stream].grpc_status == 0
        assert answer
        reply = health_pb2.HealthCheckResponse.FromString(answer[0])
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def scrape_from(source: str, port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def sidecar(descriptors: None, start_sidecar: Start) -> SidecarProcess:
    return start_sidecar(tools_file(tool("noop", "http://127.0.0.1:9/noop")))


def test_connections_to_the_metrics_port_that_send_nothing_are_bounded_and_closed(
    sidecar: SidecarProcess,
) -> None:
    base = open_fds(sidecar)
    # Half the flood sends part of a request head, half nothing at all.
    with (
        connections(sidecar.metrics_port, FLOOD // 2, b"GET /metrics HTTP/1.1\r\nHo") as partial,
        connections(sidecar.metrics_port, FLOOD // 2) as silent,
    ):
        assert len(partial) + len(silent) == FLOOD
        # Every connection was accepted; past the cap per peer each is closed on arrival.
        time.sleep(1.0)
        held = open_fds(sidecar) - base
        assert held <= SCRAPE_PER_PEER + FD_SLACK, f"{held} descriptors for {FLOOD} idle"
        # Prometheus, from its own address, still scrapes.
        assert "sidecar_inflight_calls" in scrape_from(OTHER_PEER, sidecar.metrics_port)
        # Past the head deadline every one of them is closed, though the client keeps it.
        assert wait_until(
            lambda: open_fds(sidecar) <= base + FD_SLACK, SCRAPE_HEADER_TIMEOUT + 10
        ), f"{open_fds(sidecar) - base} descriptors still held"
        # The port serves the flood's address again, and says how many it turned away.
        samples = scrape(sidecar.metrics_port)
        refused = samples["sidecar_connections_refused_total"][(("listener", "metrics"),)]
        assert refused >= FLOOD - SCRAPE_PER_PEER


def test_a_kept_alive_scrape_connection_serves_and_is_closed_once_idle(
    sidecar: SidecarProcess,
) -> None:
    request = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{sidecar.metrics_port}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", sidecar.metrics_port), timeout=5) as s:
        for _ in range(3):
            s.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(65536)
                assert chunk, "closed before answering"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200"), head[:40]
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                chunk = s.recv(65536)
                assert chunk, "closed in the middle of an answer"
                body += chunk
            assert b"sidecar_inflight_calls" in body
            time.sleep(1.0)
        # Kept alive and then idle: closed once no head came for the timeout.
        s.settimeout(SCRAPE_HEADER_TIMEOUT + 10)
        assert s.recv(1) == b"", "an idle kept-alive connection stayed open"


def test_connections_to_the_health_port_that_never_speak_are_closed(
    sidecar: SidecarProcess,
) -> None:
    base = open_fds(sidecar)
    with connections(sidecar.health_port, FLOOD):
        time.sleep(1.0)
        held = open_fds(sidecar) - base
        assert held <= PROBE_PER_PEER + FD_SLACK, f"{held} descriptors for {FLOOD} silent"
        # kubelet, from the node's address, is still answered while the flood is open.
        assert health_serving_from(OTHER_PEER, sidecar.health_port)
        assert wait_until(
            lambda: open_fds(sidecar) <= base + FD_SLACK, PROBE_CONNECTION_LIFE + 10
        ), f"{open_fds(sidecar) - base} descriptors still held"
    assert health_serving(sidecar.health_port)
    samples = scrape(sidecar.metrics_port)
    refused = samples["sidecar_connections_refused_total"][(("listener", "health"),)]
    assert refused >= FLOOD - PROBE_PER_PEER


def test_connections_to_the_tcp_data_plane_that_never_send_the_preface_are_bounded_and_closed(
    sidecar: SidecarProcess,
) -> None:
    base = open_fds(sidecar)
    # Half the flood sends part of the HTTP/2 preface, half nothing at all.
    with (
        connections(sidecar.tcp_port, FLOOD // 2, b"PRI * HTTP/2.0\r\n") as partial,
        connections(sidecar.tcp_port, FLOOD // 2) as silent,
    ):
        assert len(partial) + len(silent) == FLOOD
        time.sleep(1.0)
        held = open_fds(sidecar) - base
        assert held <= GRPC_PER_PEER + FD_SLACK, f"{held} descriptors for {FLOOD} idle"
        # A brain from its own address still calls (health over the same listener).
        assert health_serving_from(OTHER_PEER, sidecar.tcp_port)
        # Past the preface deadline every one of them is closed, though the client keeps it.
        assert wait_until(lambda: open_fds(sidecar) <= base + FD_SLACK, PREFACE_TIMEOUT + 10), (
            f"{open_fds(sidecar) - base} descriptors still held"
        )
    # The flood's address is served again, and the port says how many it turned away.
    assert health_serving(sidecar.tcp_port)
    samples = scrape(sidecar.metrics_port)
    refused = samples["sidecar_connections_refused_total"][(("listener", "grpc"),)]
    assert refused >= FLOOD - GRPC_PER_PEER
