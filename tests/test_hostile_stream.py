"""Hostile clients on the Dispatch stream: raw HTTP/2 abuse, unread results, vanishing clients.

Every case starts the real sidecar, misbehaves through :mod:`hostile.h2client` (raw HTTP/2)
or grpcio, and then asserts a specific status (a typed result, a grpc-status, an HTTP/2
error code), that the sidecar still serves, and that its RSS stayed within a stated bound.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import struct
import time
import urllib.parse
from collections.abc import Callable

import grpc
import grpc.aio
import pytest

from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from hostile.h2client import INVOKE, H2Client, grpc_message
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


def assert_still_serves(sidecar: SidecarProcess) -> None:
    """A fresh, well-behaved Dispatch stream gets its answer."""
    with H2Client(sidecar.unix_target) as h2c:
        stream = h2c.open()
        h2c.send_frame(stream, pb.DispatchFrame(calls=[call("after", "fast")]), end=True)
        assert h2c.wait_for(lambda: h2c.streams[stream].ended, 10), h2c.streams[stream]
        results = h2c.streams[stream].results()
        assert [(r.call_id, r.status) for r in results] == [("after", pb.STATUS_OK)]
        assert h2c.streams[stream].grpc_status == 0


@pytest.mark.parametrize("how", ["cancel_rpc", "close_connection"])
def test_a_client_that_goes_away_cancels_every_call_of_its_stream_at_once(
    slow: Upstream, start_sidecar: Start, how: str
) -> None:
    """Defect 1: hanging up (RST_STREAM, or the socket closing) cancels all 300 calls."""
    sidecar = start_sidecar(config(slow))
    n = 300
    h2c = H2Client(sidecar.unix_target)
    stream = h2c.open()
    h2c.send_frame(stream, pb.DispatchFrame(calls=[call(f"c{i}", "slow") for i in range(n)]))
    assert h2c.wait_for(lambda: slow.requests["/slow"] == n, 15)
    assert gauge(sidecar, "sidecar_inflight_calls") == n
    if how == "cancel_rpc":
        h2c.reset(stream)
    else:
        h2c.close()
    # Within 2 s every upstream request is dropped and nothing of the stream is left.
    assert slow.wait_for(lambda: slow.disconnects["/slow"] == n, 2.0), slow.disconnects
    assert wait_until(lambda: gauge(sidecar, "sidecar_inflight_calls") == 0, 2.0)
    assert wait_until(lambda: gauge(sidecar, "sidecar_streams_active") == 0, 2.0)
    assert gauge(sidecar, "sidecar_streams_abandoned_total") == 1
    cancelled = scrape(sidecar.metrics_port)["sidecar_tool_calls_total"]
    assert cancelled[(("status", "cancelled"), ("tool", "slow"))] == n
    if how == "cancel_rpc":
        h2c.close()
    assert_still_serves(sidecar)


def test_results_nobody_reads_are_bounded_and_the_rest_is_refused_overloaded(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Defect 2: 20 streams that never read get 2 rounds of 5 calls each (~256 KB results)
    under --max-inflight 100; each round alone fits the bound.

    A call keeps its in-flight slot until its result is taken by the transport, so about
    100 results wait in memory and the second round is refused OVERLOADED at once, instead
    of every result piling up. (The transport starts each response before any window
    opens and takes up to two frames per stream: up to 40 more.) RSS may grow by at most
    120 MB. Once the client reads, every call has exactly one result.
    """
    sidecar = start_sidecar(config(slow), "--max-inflight", "100")
    streams, rounds, per_round, limit = 20, 2, 5, 100
    assert_still_serves(sidecar)  # warm up allocator and connection pools
    rss_before = sidecar.rss_bytes()
    # Stream windows of 0: the transport can take no result until the client reads.
    h2c = H2Client(sidecar.unix_target, stream_window=0)
    ids = [h2c.open() for _ in range(streams)]
    for r in range(rounds):
        for s, stream in enumerate(ids):
            calls = [call(f"s{s}-r{r}-{i}", "big") for i in range(per_round)]
            h2c.send_frame(stream, pb.DispatchFrame(calls=calls))
        # Never read: wait until every call of the round is finished or refused.
        answered = (r + 1) * streams * per_round
        assert wait_until(lambda n=answered: answered_calls(sidecar, "big") == n, 30), r
    assert gauge(sidecar, "sidecar_undelivered_results") <= answered
    assert slow.requests["/big"] <= limit + 2 * streams
    grown = sidecar.rss_bytes() - rss_before
    assert grown < 120 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"
    expected = answered

    # Now read everything: exactly one result per call.
    h2c.open_window(None, 1 << 30)
    for stream in ids:
        h2c.open_window(stream, 1 << 24)

    def received() -> int:
        return sum(len(h2c.streams[s].results()) for s in ids)

    assert h2c.wait_for(lambda: received() == expected, 30), received()
    statuses = collections.Counter(r.status for s in ids for r in h2c.streams[s].results())
    assert set(statuses) <= {pb.STATUS_OK, pb.STATUS_OVERLOADED}, statuses
    assert statuses[pb.STATUS_OK] <= limit + 2 * streams, statuses
    assert statuses[pb.STATUS_OK] == slow.requests["/big"]
    h2c.close()
    assert wait_until(lambda: gauge(sidecar, "sidecar_undelivered_result_bytes") == 0, 5)
    assert_still_serves(sidecar)


def test_a_declared_length_over_the_limit_answers_the_call_in_flight_and_ends_non_ok(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Defect 3: a message header declaring 2 GB ends the stream with OUT_OF_RANGE,
    after the call already in flight got its one result (CANCELLED)."""
    sidecar = start_sidecar(config(slow))
    rss_before = sidecar.rss_bytes()
    with H2Client(sidecar.unix_target) as h2c:
        stream = h2c.open()
        h2c.send_frame(stream, pb.DispatchFrame(calls=[call("first", "slow")]))
        assert h2c.wait_for(lambda: slow.requests["/slow"] == 1, 10)
        h2c.send(stream, b"\x00" + struct.pack(">I", 2**31) + b"\x00" * 1024)
        state = h2c.streams[stream]
        assert h2c.wait_for(lambda: state.ended, 10), state
        assert [(r.call_id, r.status) for r in state.results()] == [("first", pb.STATUS_CANCELLED)]
        assert state.grpc_status == grpc.StatusCode.OUT_OF_RANGE.value[0], state.trailers
        assert "too large" in urllib.parse.unquote(state.trailers["grpc-message"]), state.trailers
    assert slow.wait_for(lambda: slow.disconnects["/slow"] == 1, 5)
    assert sidecar.rss_bytes() - rss_before < 20 * MIB
    assert_still_serves(sidecar)


def test_a_frame_larger_than_the_sidecar_allows_is_a_connection_error(
    slow: Upstream, start_sidecar: Start
) -> None:
    """An HTTP/2 DATA frame of 16 MB (the sidecar allows 16 KB) gets GOAWAY FRAME_SIZE_ERROR."""
    sidecar = start_sidecar(config(slow))
    rss_before = sidecar.rss_bytes()
    with H2Client(sidecar.unix_target) as h2c:
        stream = h2c.open()
        assert h2c.wait_for(lambda: h2c.conn.remote_settings.max_frame_size > 0, 5)
        length = 16 * MIB - 1
        header = struct.pack(">I", length)[1:] + b"\x00\x00" + struct.pack(">I", stream)
        h2c.send_raw(header + b"\x00" * 65536)
        assert h2c.wait_for(lambda: h2c.goaway is not None or h2c.closed, 10)
        assert h2c.goaway is not None
        assert h2c.goaway[0] == 6, h2c.goaway  # FRAME_SIZE_ERROR
    assert sidecar.rss_bytes() - rss_before < 20 * MIB
    assert_still_serves(sidecar)


def test_rapid_reset_is_cut_off_and_leaves_nothing_running(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Opening and resetting streams as fast as possible (CVE-2023-44487): every call started
    is cancelled, the connection is told to calm down or simply survives, and RSS stays
    within 30 MB."""
    sidecar = start_sidecar(config(slow))
    rss_before = sidecar.rss_bytes()
    with H2Client(sidecar.unix_target) as h2c:
        for i in range(2000):
            if h2c.goaway is not None or h2c.closed:
                break
            try:
                stream = h2c.open()
                h2c.send_frame(stream, pb.DispatchFrame(calls=[call(f"r{i}", "slow")]))
                h2c.reset(stream)
            except (BrokenPipeError, ConnectionResetError):
                break
            h2c.pump(0)
        h2c.wait_for(lambda: h2c.goaway is not None or h2c.closed, 1)
        if h2c.goaway is not None:
            assert h2c.goaway[0] in (0, 11), h2c.goaway  # NO_ERROR or ENHANCE_YOUR_CALM
    assert wait_until(lambda: gauge(sidecar, "sidecar_inflight_calls") == 0, 5)
    assert wait_until(lambda: gauge(sidecar, "sidecar_streams_active") == 0, 5)
    assert slow.wait_for(lambda: slow.disconnects["/slow"] == slow.requests["/slow"], 5)
    assert sidecar.rss_bytes() - rss_before < 30 * MIB
    assert_still_serves(sidecar)


def test_invoke_refuses_an_empty_call_id_like_dispatch(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Defect 5: the same envelope rules on both RPCs; nothing reaches the upstream."""
    sidecar = start_sidecar(config(slow))
    with H2Client(sidecar.unix_target) as h2c:
        stream = h2c.open(INVOKE)
        h2c.send(stream, grpc_message(call("", "fast").SerializeToString()), end=True)
        state = h2c.streams[stream]
        assert h2c.wait_for(lambda: state.ended, 10), state
        assert state.grpc_status == 0
        (message,) = state.messages()
        result = pb.ToolResult.FromString(message)
        assert result.status == pb.STATUS_INVALID_REQUEST, result
        assert "call_id must be non-empty" in result.error
    assert slow.requests["/fast"] == 0
    assert_still_serves(sidecar)


async def test_a_grpc_client_that_cancels_its_stream_releases_everything(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Defect 1 through grpcio: cancelling the Dispatch call with 200 calls in flight."""
    sidecar = start_sidecar(config(slow))
    n = 200
    async with grpc.aio.insecure_channel(
        sidecar.unix_target, options=[("grpc.default_authority", "localhost")]
    ) as channel:
        frames: asyncio.Queue[pb.DispatchFrame | None] = asyncio.Queue()
        await frames.put(pb.DispatchFrame(calls=[call(f"g{i}", "slow") for i in range(n)]))

        async def outbound():  # type: ignore[no-untyped-def]
            while (frame := await frames.get()) is not None:
                yield frame

        rpc = pb_grpc.DispatcherStub(channel).Dispatch(outbound())
        assert await asyncio.to_thread(slow.wait_for, lambda: slow.requests["/slow"] == n, 15)
        rpc.cancel()
        assert await asyncio.to_thread(
            slow.wait_for, lambda: slow.disconnects["/slow"] == n, 2.0
        ), slow.disconnects
    assert await asyncio.to_thread(
        wait_until, lambda: gauge(sidecar, "sidecar_inflight_calls") == 0, 2.0
    )
    assert gauge(sidecar, "sidecar_streams_abandoned_total") == 1
    await asyncio.to_thread(assert_still_serves, sidecar)


def test_a_client_still_writing_at_drain_gets_every_last_result(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Defect 4: the drain timeout's CANCELLED results reach a client that keeps writing.

    A client does not read the instant bytes arrive, and it keeps writing while it has
    streams open (window updates, PINGs). If the sidecar closes the connection outright
    once its last frame is written, that client's next write fails (EPIPE; a reset on
    TCP), and a client that fails the connection on a write error (grpcio does) loses the
    results still unread in its socket. The sidecar must close lingering: shut its write
    side and read until the client has closed.
    """
    n = 5
    sidecar = start_sidecar(config(slow), "--drain-timeout", "1s")
    h2c = H2Client(sidecar.unix_target)
    stream = h2c.open()
    h2c.send_frame(stream, pb.DispatchFrame(calls=[call(f"d{i}", "slow") for i in range(n)]))
    assert slow.wait_for(lambda: slow.requests["/slow"] == n, 15)

    assert sidecar.proc is not None
    sidecar.proc.send_signal(signal.SIGTERM)

    # Read (and answer the graceful shutdown's PING) until the drain timeout passes...
    def drained() -> bool:
        return "drain timeout passed" in sidecar.log_text()

    h2c.wait_for(drained, 10)
    # The log line comes through a pipe that the harness reads on a thread of its own: on
    # a busy machine it can land after the socket has delivered everything that followed
    # it (the CANCELLED results, the trailers, the sidecar's half-close).
    assert wait_until(drained, 5), (
        f"closed={h2c.closed} goaway={h2c.goaway} write_error={h2c.write_error} "
        f"stream={h2c.streams[stream]}\n" + sidecar.log_text()[-4000:]
    )
    assert h2c.goaway is not None
    assert h2c.write_error is None
    # ...then hold back reading for a second (well inside the linger limit), writing.
    held_until = time.monotonic() + 1.0
    while time.monotonic() < held_until and h2c.write_error is None:
        h2c.ping()
        time.sleep(0.05)
    assert h2c.write_error is None, f"the sidecar closed under a writing client: {h2c.write_error}"

    state = h2c.streams[stream]
    assert h2c.wait_for(lambda: state.ended, 5), state
    assert sorted((r.call_id, r.status) for r in state.results()) == [
        (f"d{i}", pb.STATUS_CANCELLED) for i in range(n)
    ]
    assert state.grpc_status == 0
    # Once the client has read the end and closed, the sidecar exits at once.
    assert h2c.wait_for(lambda: h2c.closed, 5)
    h2c.close()
    assert sidecar.proc.wait(10) == 0
