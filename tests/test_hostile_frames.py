"""Hostile clients on the frames socket (``--listen frames:``): the Dispatch stream framed
without gRPC must keep every promise the gRPC stream keeps (``test_hostile_stream.py``).

Each case speaks the wire format by hand (``proto/dispatch/v1/dispatch.proto``, beside
``StreamEnd``) through a plain blocking socket, misbehaves, and asserts the specific
outcome (a typed result, a StreamEnd status, a closed connection), that the sidecar still
serves, and where it matters that its RSS stayed within a stated bound.
"""

from __future__ import annotations

import collections
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from brain._frames import PREFACE
from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from hostile.streams import (
    MIB,
    answered_calls,
    call,
    config,
    gauge,
    wait_until,
)

from harness import SidecarProcess, Upstream, scrape

Start = Callable[..., SidecarProcess]

OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


class FramesClient:
    """A framed Dispatch stream over a plain socket, driven one step at a time."""

    def __init__(self, path: Path, *, preface: bytes = PREFACE):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buffer = b""
        self.results: list[pb.ToolResult] = []
        self.end: pb.StreamEnd | None = None
        if preface:
            self.sock.sendall(preface)

    def open(self) -> FramesClient:
        assert self.recv_exactly(len(PREFACE)) == PREFACE
        return self

    def send(self, kind: int, message: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">IB", len(message) + 1, kind) + message)

    def calls(self, *calls: pb.ToolCall, cancel: tuple[str, ...] = ()) -> None:
        self.send(1, pb.DispatchFrame(calls=calls, cancel_call_ids=cancel).SerializeToString())

    def recv_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(f"closed with {len(self.buffer)} of {n} bytes")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def read_frame(self) -> None:
        length, kind = struct.unpack(">IB", self.recv_exactly(5))
        message = self.recv_exactly(length - 1)
        if kind == 1:
            self.results.extend(pb.ResultFrame.FromString(message).results)
        else:
            assert kind == 2, kind
            self.end = pb.StreamEnd.FromString(message)

    def read_to_end(self) -> pb.StreamEnd:
        while self.end is None:
            self.read_frame()
        assert self.sock.recv(1) == b"", "bytes after the StreamEnd"
        return self.end

    def read_results(self, n: int) -> None:
        while len(self.results) < n and self.end is None:
            self.read_frame()

    def closed_by_sidecar(self) -> bool:
        """Whether the sidecar closed without sending anything (a reset when it left
        our bytes unread)."""
        try:
            return self.sock.recv(64) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def assert_still_serves(sidecar: SidecarProcess) -> None:
    """A fresh, well-behaved framed stream gets its answer and an OK end."""
    client = FramesClient(sidecar.frames_socket).open()
    client.calls(call("after", "fast"))
    client.send(2)
    end = client.read_to_end()
    assert [(r.call_id, r.status) for r in client.results] == [("after", pb.STATUS_OK)]
    assert end.code == 0, end
    client.close()


#: A stream's backlog bound small enough for six unread /big results to pass it.
BOUND_256K = ("--max-undelivered-bytes-per-stream", "256KiB")


def fill_backlog(sidecar: SidecarProcess, client: FramesClient) -> None:
    """Takes ``client``'s stream (under ``BOUND_256K``) past its backlog bound: six
    ~256 KB results it does not read."""
    client.calls(*(call(f"b{i}", "big") for i in range(6)))
    assert wait_until(lambda: answered_calls(sidecar, "big") == 6, 30)
    assert wait_until(lambda: gauge(sidecar, "sidecar_undelivered_result_bytes") >= 256 * 1024, 10)


def test_half_close_answers_every_call_then_ends_ok(slow: Upstream, start_sidecar: Start) -> None:
    sidecar = start_sidecar(config(slow))
    client = FramesClient(sidecar.frames_socket).open()
    client.calls(*(call(f"c{i}", "fast") for i in range(50)))
    client.calls(call("", "fast"), call("x", "no-such-tool"))
    client.send(2)
    end = client.read_to_end()
    assert end.code == 0, end
    statuses = {r.call_id: r.status for r in client.results}
    assert len(client.results) == 52 == len(statuses)
    assert statuses.pop("") == pb.STATUS_INVALID_REQUEST
    assert statuses.pop("x") == pb.STATUS_UNKNOWN_TOOL
    assert set(statuses.values()) == {pb.STATUS_OK}
    client.close()


@pytest.mark.parametrize("how", ["close", "cancel_frame"])
def test_a_client_that_goes_away_cancels_every_call_of_its_stream_at_once(
    slow: Upstream, start_sidecar: Start, how: str
) -> None:
    """Closing the socket without "end of calls" cancels all 300 calls at once; a cancel
    frame cancels the one it names."""
    sidecar = start_sidecar(config(slow))
    n = 300
    client = FramesClient(sidecar.frames_socket).open()
    client.calls(*(call(f"c{i}", "slow") for i in range(n)))
    assert slow.wait_for(lambda: slow.requests["/slow"] == n, 15)
    assert gauge(sidecar, "sidecar_inflight_calls") == n
    if how == "cancel_frame":
        client.calls(cancel=("c7",))
        client.read_results(1)
        assert [(r.call_id, r.status) for r in client.results] == [("c7", pb.STATUS_CANCELLED)]
        assert slow.wait_for(lambda: slow.disconnects["/slow"] == 1, 2.0)
    client.close()
    assert slow.wait_for(lambda: slow.disconnects["/slow"] == n, 2.0), slow.disconnects
    assert wait_until(lambda: gauge(sidecar, "sidecar_inflight_calls") == 0, 2.0)
    assert wait_until(lambda: gauge(sidecar, "sidecar_streams_active") == 0, 2.0)
    assert gauge(sidecar, "sidecar_streams_abandoned_total") == 1
    cancelled = scrape(sidecar.metrics_port)["sidecar_tool_calls_total"]
    assert cancelled[(("status", "cancelled"), ("tool", "slow"))] == n
    assert_still_serves(sidecar)


def test_a_client_that_goes_away_past_its_backlog_bound_cancels_every_call_of_its_stream(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Past its backlog bound the session only reads ahead (calls kept, not started);
    the client's going away still cancels the calls in flight at once, and the call read
    ahead never starts."""
    sidecar = start_sidecar(config(slow), *BOUND_256K)
    n = 50
    client = FramesClient(sidecar.frames_socket).open()
    client.calls(*(call(f"s{i}", "slow") for i in range(n)))
    assert slow.wait_for(lambda: slow.requests["/slow"] == n, 15)
    fill_backlog(sidecar, client)
    client.calls(call("ahead", "slow"))
    time.sleep(0.2)  # for the reader to take it ahead; it must not start either way
    client.close()
    assert slow.wait_for(lambda: slow.disconnects["/slow"] == n, 2.0), slow.disconnects
    assert wait_until(lambda: gauge(sidecar, "sidecar_inflight_calls") == 0, 2.0)
    assert wait_until(lambda: gauge(sidecar, "sidecar_streams_active") == 0, 2.0)
    assert wait_until(lambda: gauge(sidecar, "sidecar_undelivered_result_bytes") == 0, 2.0)
    assert slow.requests["/slow"] == n
    cancelled = scrape(sidecar.metrics_port)["sidecar_tool_calls_total"]
    assert cancelled[(("status", "cancelled"), ("tool", "slow"))] == n
    assert_still_serves(sidecar)


def test_results_nobody_reads_are_bounded_and_the_rest_is_refused_overloaded(
    slow: Upstream, start_sidecar: Start
) -> None:
    """20 streams that never read get 2 rounds of 5 calls (~256 KB results) under
    --max-inflight 100. A call holds its slot until its result is written to the socket,
    and the socket buffers less than one result, so about 100 results wait and the rest
    is refused OVERLOADED; RSS grows by at most 120 MB. Once the clients read, every call
    has exactly one result."""
    sidecar = start_sidecar(config(slow), "--max-inflight", "100")
    streams, rounds, per_round, limit = 20, 2, 5, 100
    assert_still_serves(sidecar)
    rss_before = sidecar.rss_bytes()
    clients = [FramesClient(sidecar.frames_socket).open() for _ in range(streams)]
    for r in range(rounds):
        for s, client in enumerate(clients):
            client.calls(*(call(f"s{s}-r{r}-{i}", "big") for i in range(per_round)))
        answered = (r + 1) * streams * per_round
        assert wait_until(lambda n=answered: answered_calls(sidecar, "big") == n, 30), r
    assert gauge(sidecar, "sidecar_undelivered_results") <= answered
    assert slow.requests["/big"] <= limit + 2 * streams
    grown = sidecar.rss_bytes() - rss_before
    assert grown < 120 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"

    statuses: collections.Counter[int] = collections.Counter()
    for client in clients:
        client.read_results(rounds * per_round)
        assert len(client.results) == rounds * per_round
        statuses.update(r.status for r in client.results)
        client.send(2)
        assert client.read_to_end().code == 0
        client.close()
    assert set(statuses) <= {pb.STATUS_OK, pb.STATUS_OVERLOADED}, statuses
    assert statuses[pb.STATUS_OVERLOADED] > 0, statuses
    assert statuses[pb.STATUS_OK] == slow.requests["/big"]
    assert wait_until(lambda: gauge(sidecar, "sidecar_undelivered_result_bytes") == 0, 5)
    assert_still_serves(sidecar)


def test_past_its_backlog_bound_a_stream_reads_ahead_by_what_frames_hold_not_their_size(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Past its backlog bound a stream still reads ahead a bounded amount (to reach the
    shared region's releases behind its calls). A frame with no calls is 5 bytes on the
    wire but a queue entry in the sidecar: counted by its wire size, a client that reads
    nothing could send millions of them and grow the sidecar's heap without end (10 MB of
    them grew it by 187 MiB). Counted by what they hold, the client's writes stop after
    a few thousand (plus what the kernel buffers), the sidecar's RSS stays put, and once
    the client reads, everything it sent is taken and the stream ends OK."""
    sidecar = start_sidecar(config(slow), *BOUND_256K)
    client = FramesClient(sidecar.frames_socket).open()
    fill_backlog(sidecar, client)
    rss_before = sidecar.rss_bytes()

    empty = struct.pack(">IB", 1, 1)  # a calls frame (kind 1) with no calls
    flood = memoryview(empty * 2_000_000)  # 10 MB on the wire
    client.sock.settimeout(2)
    sent = 0
    try:
        while sent < len(flood):
            sent += client.sock.send(flood[sent : sent + (1 << 16)])
    except TimeoutError:
        pass
    grown = sidecar.rss_bytes() - rss_before
    # What may be in flight besides the read-ahead: the kernel's buffer for this socket.
    buffered = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert sent < 2 * MIB + 2 * buffered, f"the sidecar took {sent / MIB:.1f} MiB unread"
    assert grown < 32 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"

    # Read: the backlog drains, the session takes what it read ahead and the rest.
    client.sock.settimeout(30)
    client.read_results(6)
    client.sock.sendall(flood[sent : sent + (-sent) % len(empty)])
    client.calls(call("after", "fast"))
    client.send(2)
    assert client.read_to_end().code == 0
    assert sorted(r.call_id for r in client.results) == ["after"] + [f"b{i}" for i in range(6)]
    assert all(r.status == pb.STATUS_OK for r in client.results)
    client.close()
    assert_still_serves(sidecar)


@pytest.mark.parametrize(
    ("frame", "code", "message"),
    [
        (struct.pack(">I", 2**31) + b"\x01" + b"\x00" * 1024, OUT_OF_RANGE, "too large"),
        (struct.pack(">IB", 1, 9), INVALID_ARGUMENT, "unknown frame kind 9"),
        (struct.pack(">IB", 4, 1) + b"\xff\xff\xff", INVALID_ARGUMENT, "malformed DispatchFrame"),
        (struct.pack(">I", 0), INVALID_ARGUMENT, "kind byte"),
    ],
    ids=["declared-2GB", "unknown-kind", "garbage", "empty"],
)
def test_a_frame_the_sidecar_cannot_read_answers_the_call_in_flight_then_ends_with_why(
    slow: Upstream, start_sidecar: Start, frame: bytes, code: int, message: str
) -> None:
    sidecar = start_sidecar(config(slow))
    rss_before = sidecar.rss_bytes()
    client = FramesClient(sidecar.frames_socket).open()
    client.calls(call("first", "slow"))
    assert slow.wait_for(lambda: slow.requests["/slow"] == 1, 10)
    client.sock.sendall(frame)
    end = client.read_to_end()
    assert [(r.call_id, r.status) for r in client.results] == [("first", pb.STATUS_CANCELLED)]
    assert (end.code, message in end.message) == (code, True), end
    assert slow.wait_for(lambda: slow.disconnects["/slow"] == 1, 5)
    assert sidecar.rss_bytes() - rss_before < 20 * MIB
    client.close()
    assert_still_serves(sidecar)


def test_a_connection_without_the_preface_is_closed_unanswered(
    slow: Upstream, start_sidecar: Start
) -> None:
    """An HTTP/2 client pointed at the frames socket is closed with a warning that says
    so; a client that sends nothing is closed after the 5 s preface timeout."""
    sidecar = start_sidecar(config(slow))
    h2 = FramesClient(sidecar.frames_socket, preface=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert h2.closed_by_sidecar()
    h2.close()
    assert wait_until(lambda: "did not open with the tandem preface" in sidecar.log_text(), 5)
    mute = FramesClient(sidecar.frames_socket, preface=b"")
    started = time.monotonic()
    assert mute.closed_by_sidecar()
    assert 4 < time.monotonic() - started < 9
    mute.close()
    assert wait_until(lambda: "sent no preface" in sidecar.log_text(), 5)
    assert_still_serves(sidecar)


def test_sigterm_finishes_the_calls_in_flight_then_ends_the_stream(
    upstream: Upstream, start_sidecar: Start
) -> None:
    """Draining: the calls in flight finish and are answered, then StreamEnd OK, even to a
    client that keeps writing (it is read until it closes); the sidecar exits 0."""
    import asyncio

    from aiohttp import web

    async def slowish(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.json_response({"ok": True})

    upstream.route("GET", "/slowish", slowish)
    upstream.json("GET", "/fast", {"ok": True})
    sidecar = start_sidecar(
        config(upstream).replace(f"{upstream.url}/slow", f"{upstream.url}/slowish")
    )
    client = FramesClient(sidecar.frames_socket).open()
    client.calls(*(call(f"d{i}", "slow") for i in range(5)))
    assert upstream.wait_for(lambda: upstream.requests["/slowish"] == 5, 10)
    assert sidecar.proc is not None
    sidecar.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: "draining" in sidecar.log_text(), 5)
    client.calls(call("late", "fast"))
    end = client.read_to_end()
    assert end.code == 0, end
    statuses = sorted((r.call_id, r.status) for r in client.results)
    assert statuses == [(f"d{i}", pb.STATUS_OK) for i in range(5)] + [
        ("late", pb.STATUS_DRAINING)
    ] or statuses == [(f"d{i}", pb.STATUS_OK) for i in range(5)], statuses
    # Still writing after the end: read and dropped, not reset, until the client closes.
    client.calls(call("after-end", "fast"))
    client.close()
    assert sidecar.proc.wait(10) == 0
