"""Hostile clients of the brain's HTTP API: the real ``python -m brain serve`` process.

The API's port is open to the cluster. Before its bounds (``brain._api.limits``), a
300 MB ``POST /v1/runs`` body was read whole into the brain (+300 MB RSS), a body that
trickled in held its connection and request for good, and every connection was accepted
(3,000 idle ones: 3,000 file descriptors) until the head deadline closed it. Each case
here does one of those to a real brain and asserts what the brain holds (RSS, file
descriptors, from /proc) stays bounded, that it answers as documented (413, 408, 503), and
that a well-behaved client from another address is still served meanwhile.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from brain_harness import ServeProcess, tools_config
from harness import SidecarProcess, Upstream

Start = Callable[..., SidecarProcess]

#: What ``brain serve`` accepts as a body by default (``--max-request-bytes``).
MAX_BODY = 1 << 20
#: The flood case's caps (``--max-connections-per-peer``) and its connections.
PER_PEER = 100
FLOOD = 300
#: File descriptors the brain may open besides the connections under test.
FD_SLACK = 16


@pytest.fixture
def sidecar(upstream: Upstream, start_sidecar: Start) -> SidecarProcess:
    return start_sidecar(tools_config(upstream.url))


@contextmanager
def brain(sidecar: SidecarProcess, *flags: str) -> Iterator[ServeProcess]:
    serve = ServeProcess(sidecar, *flags)
    try:
        yield serve
    finally:
        serve.kill()


def address(serve: ServeProcess) -> tuple[str, int]:
    host, port = serve.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def rss_bytes(serve: ServeProcess) -> int:
    for line in Path(f"/proc/{serve.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds(serve: ServeProcess) -> int:
    return len(list(Path(f"/proc/{serve.proc.pid}/fd").iterdir()))


def get(serve: ServeProcess, path: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    host, port = address(serve)
    conn = http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def refused(serve: ServeProcess, reason: str) -> float:
    _, text = get(serve, "/metrics", "127.0.0.2")
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "brain_http_refused_total" and sample.labels["reason"] == reason:
                return float(sample.value)
    return 0.0


def read_answer(sock: socket.socket, seconds: float = 10) -> bytes:
    """What the server sent until it closed (a reset after an answer ends it too)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def stream_until_cut(sock: socket.socket, most: int) -> int:
    """Sends a chunked ``POST /v1/runs`` body (64 KiB chunks, no end) until the server
    ends the connection; the bytes of body sent. Fails if ``most`` bytes go out first, or
    if the server stops reading without ending the connection."""
    sock.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: brain\r\nTransfer-Encoding: chunked\r\n\r\n")
    sock.settimeout(10)  # a server that stops reading and holds on: TimeoutError
    piece = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    sent = 0
    while sent < most:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return sent
        sent += 0x10000
    raise AssertionError(f"the server read {sent} bytes of a body without end")


def test_a_declared_body_past_the_limit_gets_413_at_once(sidecar: SidecarProcess) -> None:
    with brain(sidecar) as serve:
        sock = socket.create_connection(address(serve))
        with sock:
            sock.sendall(
                b"POST /v1/runs HTTP/1.1\r\nHost: brain\r\nContent-Type: application/json\r\n"
                b"Content-Length: 314572800\r\n\r\n"
            )
            answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"at most 1048576 are accepted" in answer
        assert refused(serve, "body_too_large") == 1


def test_a_body_streamed_without_end_is_cut_at_the_limit_and_never_held(
    sidecar: SidecarProcess,
) -> None:
    """64 MB of a chunked body as fast as the socket takes it: the brain must end the
    connection near the limit, its RSS never growing by more than a few limits."""
    with brain(sidecar) as serve:
        get(serve, "/healthz")  # the first request's imports and caches, before the baseline
        before = rss_bytes(serve)
        peak = before
        sending = threading.Event()
        sending.set()

        def watch() -> None:
            nonlocal peak
            while sending.is_set():
                peak = max(peak, rss_bytes(serve))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        sock = socket.create_connection(address(serve))
        try:
            sent = stream_until_cut(sock, 64 << 20)
        finally:
            sock.close()
            sending.clear()
            watcher.join(5)
        # The kernel's socket buffers hold a few MB beyond what the brain read.
        assert sent < 32 << 20, f"the brain read {sent} bytes of an over-limit body"
        assert peak - before < 16 << 20, f"RSS grew by {(peak - before) >> 20} MiB"
        assert refused(serve, "body_too_large") == 1
        assert get(serve, "/healthz")[0] == 200


def test_a_body_trickled_past_its_deadline_gets_408(sidecar: SidecarProcess) -> None:
    with brain(sidecar, "--request-body-timeout", "1") as serve:
        sock = socket.create_connection(address(serve))
        with sock:
            sock.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: brain\r\nContent-Length: 100\r\n\r\n{")
            started = time.monotonic()
            answer = read_answer(sock)
            took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 0.9 < took < 8, took
        assert refused(serve, "body_timeout") == 1


def test_a_connection_flood_from_one_address_is_bounded_and_the_rest_are_served(
    sidecar: SidecarProcess,
) -> None:
    with brain(
        sidecar,
        "--max-connections-per-peer",
        str(PER_PEER),
        "--request-head-timeout",
        "3",
    ) as serve:
        baseline = open_fds(serve)
        flood: list[socket.socket] = []
        try:
            for _ in range(FLOOD):
                flood.append(socket.create_connection(address(serve), timeout=5))
            # The first PER_PEER are held (until their head deadline); every later one
            # is told 503 and closed as it is accepted.
            busy = [read_answer(s, 5) for s in flood[PER_PEER:]]
            assert all(a.startswith(b"HTTP/1.1 503") for a in busy), {a[:40] for a in busy}
            assert open_fds(serve) <= baseline + PER_PEER + FD_SLACK
            # Another address (the kubelet's probe) is served meanwhile.
            assert get(serve, "/healthz", "127.0.0.2")[0] == 200
            assert refused(serve, "connections") == FLOOD - PER_PEER
            # Past the head deadline the brain has closed the held ones.
            held = [read_answer(s, 10) for s in flood[:PER_PEER]]
            assert held == [b""] * PER_PEER
        finally:
            for s in flood:
                s.close()
        deadline = time.monotonic() + 10
        while open_fds(serve) > baseline + FD_SLACK and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_fds(serve) <= baseline + FD_SLACK
        assert refused(serve, "head_timeout") == PER_PEER
        assert get(serve, "/healthz")[0] == 200
