"""Large results through shared memory on the frames socket (framing version 2, specified
beside ``StreamEnd`` in ``proto/dispatch/v1/dispatch.proto``), against the real sidecar.

A plain blocking client speaks version 2 by hand (the descriptor arrives with the
sidecar's preface), so each case can misbehave on purpose: never release, release what it
may not, open more regions than the sidecar allows. The brain's own client over the same
path is tested at the end, with the region small enough to wrap and to fill.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from brain import ClientOptions, SidecarClient
from brain._frames import PREFACE, PREFACE_SHARED
from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from hostile.streams import RESULT_BYTES, call, config, gauge, wait_until
from test_hostile_frames import BOUND_256K, INVALID_ARGUMENT, FramesClient, assert_still_serves

from harness import SidecarProcess, Upstream, scrape

Start = Callable[..., SidecarProcess]
REGION = 1 << 20
#: What /big answers, byte for byte (aiohttp's json_response).
BIG = json.dumps({"blob": "x" * RESULT_BYTES}).encode()


class SharedClient(FramesClient):
    """A version 2 client: maps the region the sidecar passes, copies results out of it,
    and releases when told to."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, preface=PREFACE_SHARED)
        self.region: mmap.mmap | None = None
        #: The region's descriptor, kept (as a client may keep it).
        self.region_fd: int | None = None
        self.copied = 0

    def open(self) -> SharedClient:
        answer = b""
        fds: list[int] = []
        while len(answer) < len(PREFACE):
            chunk, got, _, _ = socket.recv_fds(self.sock, len(PREFACE) - len(answer), 1)
            assert chunk, "closed during the preface"
            answer += chunk
            fds += got
        if answer == PREFACE_SHARED:
            assert len(fds) == 1, fds
            size = os.fstat(fds[0]).st_size
            self.region = mmap.mmap(fds[0], size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            self.region_fd = fds[0]
        else:
            assert (answer, fds) == (PREFACE, []), (answer, fds)
        return self

    def body(self, result: pb.ToolResult) -> bytes:
        """The result's JSON, wherever it travelled."""
        if not result.HasField("shared_result"):
            return result.result
        assert self.region is not None
        assert result.result == b""
        span = result.shared_result
        at = span.offset % len(self.region)
        assert at + span.length <= len(self.region), span
        self.copied = max(self.copied, span.offset + span.length)
        return self.region[at : at + span.length]

    def release(self, through: int | None = None) -> None:
        self.send(3, struct.pack(">Q", self.copied if through is None else through))

    def close(self) -> None:
        super().close()
        if self.region is not None:
            self.region.close()
        if self.region_fd is not None:
            os.close(self.region_fd)
            self.region_fd = None


def shared_counts(sidecar: SidecarProcess) -> dict[str, float]:
    samples = scrape(sidecar.metrics_port).get("sidecar_frames_shared_results_total", {})
    return {dict(labels)["outcome"]: value for labels, value in samples.items()}


def test_large_results_lie_in_the_region_byte_for_byte_as_it_wraps(
    slow: Upstream, start_sidecar: Start
) -> None:
    """A 1 MiB region holds three ~256 KB results: 15 of them, three at a time and each
    batch released, go round it five times; the tiny result stays on the socket."""
    sidecar = start_sidecar(config(slow), "--frames-shared-region", "1MiB")
    client = SharedClient(sidecar.frames_socket).open()
    assert client.region is not None
    assert len(client.region) == REGION
    offsets = []
    for batch in range(5):
        client.calls(*(call(f"b{batch}-{i}", "big") for i in range(3)))
        client.read_results(3 * (batch + 1))
        for result in client.results[-3:]:
            assert result.status == pb.STATUS_OK, result
            assert result.HasField("shared_result")
            assert client.body(result) == BIG
            offsets.append(result.shared_result.offset)
        client.release()
    assert offsets == sorted(offsets)
    assert offsets[-1] > 4 * REGION, offsets
    client.calls(call("tiny", "fast"))
    client.read_results(16)
    tiny = client.results[-1]
    assert (tiny.HasField("shared_result"), json.loads(tiny.result)) == (False, {"ok": True})
    client.send(2)
    assert client.read_to_end().code == 0
    client.close()
    assert shared_counts(sidecar) == {"shared": 15, "full": 0}


def test_a_client_that_never_releases_gets_its_results_on_the_socket(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Nothing released: three results fill the region, the fourth waits out
    ``--frames-shared-room-wait`` for room, and it and the other four travel inline
    without waiting again, every one byte for byte; once released, results use the
    region again."""
    sidecar = start_sidecar(
        config(slow), "--frames-shared-region", "1MiB", "--frames-shared-room-wait", "100ms"
    )
    client = SharedClient(sidecar.frames_socket).open()
    client.calls(*(call(f"c{i}", "big") for i in range(8)))
    client.read_results(8)
    shared = [r.HasField("shared_result") for r in client.results]
    assert (shared.count(True), shared.count(False)) == (3, 5), shared
    assert all(client.body(r) == BIG for r in client.results)
    assert shared_counts(sidecar) == {"shared": 3, "full": 5}
    client.release()
    client.calls(call("after", "big"))
    client.read_results(9)
    assert client.results[-1].HasField("shared_result")
    assert client.body(client.results[-1]) == BIG
    client.send(2)
    assert client.read_to_end().code == 0
    client.close()


def test_a_large_result_waits_for_a_release_rather_than_take_the_socket(
    slow: Upstream, start_sidecar: Start
) -> None:
    """The region holds three ~256 KB results. The fourth waits for the client to release
    room, as a client that is behind (a pause) will, instead of travelling inline, which
    costs the client more exactly while it is behind; released, it and the rest come
    through the region."""
    sidecar = start_sidecar(
        config(slow), "--frames-shared-region", "1MiB", "--frames-shared-room-wait", "60s"
    )
    client = SharedClient(sidecar.frames_socket).open()
    client.calls(*(call(f"w{i}", "big") for i in range(6)))
    client.read_results(3)
    assert [r.HasField("shared_result") for r in client.results] == [True] * 3
    assert all(client.body(r) == BIG for r in client.results)
    # Nothing more comes until the client releases.
    assert client.buffer == b""
    client.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        client.sock.recv(1, socket.MSG_PEEK)
    client.sock.settimeout(10)
    client.release()
    client.read_results(6)
    assert [r.HasField("shared_result") for r in client.results] == [True] * 6
    assert all(client.body(r) == BIG for r in client.results)
    assert shared_counts(sidecar) == {"shared": 6, "full": 0}
    client.send(2)
    assert client.read_to_end().code == 0
    client.close()


def waiting_for_room_past_the_bound(
    start_sidecar: Start, tools: str
) -> tuple[SidecarProcess, SharedClient]:
    """A stream past its backlog bound (``BOUND_256K``) whose results wait for room: a
    1 MiB region holds three of six ~256 KB results, which the client has read and not
    released; the other three wait (``--frames-shared-room-wait`` 60 s)."""
    sidecar = start_sidecar(
        tools, "--frames-shared-region", "1MiB", "--frames-shared-room-wait", "60s", *BOUND_256K
    )
    client = SharedClient(sidecar.frames_socket).open()
    client.calls(*(call(f"b{i}", "big") for i in range(6)))
    client.read_results(3)
    assert all(client.body(r) == BIG for r in client.results)
    assert wait_until(
        lambda: gauge(sidecar, "sidecar_undelivered_result_bytes") >= 3 * len(BIG), 10
    )
    return sidecar, client


def test_a_stream_past_its_backlog_bound_still_takes_the_releases_behind_its_calls(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Past its backlog bound a stream reads no more calls, yet the release its client
    sends after a new call is still taken: the results waiting for room get it, the
    backlog drains through the region, and the new call then runs. Read no further, the
    release would sit behind the unread call while the results wait for it."""
    sidecar, client = waiting_for_room_past_the_bound(start_sidecar, config(slow))
    released_before = gauge(sidecar, "sidecar_frames_shared_released_bytes_total")
    client.calls(call("late", "fast"))
    client.release()
    client.read_results(7)
    assert gauge(sidecar, "sidecar_frames_shared_released_bytes_total") - released_before == (
        client.results[2].shared_result.offset + client.results[2].shared_result.length
    )
    big, late = client.results[:6], client.results[6]
    assert [r.HasField("shared_result") for r in big] == [True] * 6
    assert all(client.body(r) == BIG for r in big)
    assert (late.call_id, late.status, json.loads(late.result)) == (
        "late",
        pb.STATUS_OK,
        {"ok": True},
    )
    client.send(2)
    assert client.read_to_end().code == 0
    client.close()


def test_past_its_backlog_bound_with_the_read_ahead_full_results_go_inline_at_once(
    slow: Upstream, start_sidecar: Start
) -> None:
    """Past its backlog bound, with more calls sent than the stream may read ahead, the
    release the client sent after them cannot arrive before results go out. The results
    waiting for room then travel inline at once instead of waiting out the room wait,
    the backlog drains, and every call read after it gets its one result. (Waiting, a
    brain at its CPU limit on 8 cores got a third of the calls/s it held just below.)"""
    sidecar, client = waiting_for_room_past_the_bound(
        start_sidecar,
        # Thousands of calls below: a few connections to the test's upstream, not a
        # thousand (its aiohttp server is stopped while they close).
        config(slow, upstreams={slow.url: {"max_concurrency": 8}}),
    )
    # Calls until the sidecar reads no more of them (its read-ahead is full and the
    # socket's buffers are), then the release, behind them.
    sent = 0
    client.sock.setblocking(False)
    frame = b""
    try:
        while True:
            if not frame:
                batch = [call(f"f{sent + i}", "fast") for i in range(100)]
                message = pb.DispatchFrame(calls=batch).SerializeToString()
                frame = struct.pack(">IB", len(message) + 1, 1) + message
                sent += len(batch)
            try:
                frame = frame[client.sock.send(frame) :]
            except BlockingIOError:
                readable = select.select([], [client.sock], [], 1.0)[1]
                if not readable:
                    break  # a second without room: the sidecar stopped reading
    finally:
        client.sock.setblocking(True)
        client.sock.settimeout(20)
    assert frame, "the sidecar read every call sent: nothing was held back"
    # The three results that found the region full still wait.
    assert gauge(sidecar, "sidecar_undelivered_result_bytes") >= 3 * len(BIG)
    # The rest of the partly sent frame, then the release: both wait behind unread calls.
    tail = threading.Thread(target=lambda: (client.sock.sendall(frame), client.release()))
    tail.start()
    client.read_results(6 + sent)
    tail.join(20)
    assert not tail.is_alive()
    big = [r for r in client.results if r.call_id.startswith("b")]
    assert sorted(r.call_id for r in big) == [f"b{i}" for i in range(6)]
    assert all(r.status == pb.STATUS_OK and client.body(r) == BIG for r in big)
    assert sum(not r.HasField("shared_result") for r in big) >= 1, "nothing went inline"
    fast = [r for r in client.results if r.call_id.startswith("f")]
    assert len(client.results) == len(big) + len(fast)
    assert sorted(r.call_id for r in fast) == sorted(f"f{i}" for i in range(sent))
    assert all(r.status == pb.STATUS_OK for r in fast)
    client.send(2)
    assert client.read_to_end().code == 0
    client.close()


@pytest.mark.parametrize(
    ("release", "message"),
    [
        (lambda placed: placed + 1, "past the"),
        (lambda placed: 2**64 - 1, "past the"),
    ],
    ids=["one-past-placed", "u64-max"],
)
def test_a_release_of_what_was_not_placed_ends_the_stream_with_why(
    slow: Upstream, start_sidecar: Start, release: Callable[[int], int], message: str
) -> None:
    sidecar = start_sidecar(config(slow), "--frames-shared-region", "1MiB")
    client = SharedClient(sidecar.frames_socket).open()
    client.calls(call("one", "big"))
    client.read_results(1)
    client.body(client.results[0])
    placed = client.copied
    client.calls(call("stuck", "slow"))
    assert slow.wait_for(lambda: slow.requests["/slow"] == 1, 10)
    client.release(release(placed))
    end = client.read_to_end()
    assert [(r.call_id, r.status) for r in client.results] == [
        ("one", pb.STATUS_OK),
        ("stuck", pb.STATUS_CANCELLED),
    ]
    assert (end.code, message in end.message) == (INVALID_ARGUMENT, True), end
    client.close()
    assert_still_serves(sidecar)


def test_a_release_that_goes_back_ends_the_stream(slow: Upstream, start_sidecar: Start) -> None:
    sidecar = start_sidecar(config(slow), "--frames-shared-region", "1MiB")
    client = SharedClient(sidecar.frames_socket).open()
    client.calls(call("one", "big"), call("two", "big"))
    client.read_results(2)
    for result in client.results:
        client.body(result)
    client.release()
    client.release(1)
    end = client.read_to_end()
    assert (end.code, "behind the" in end.message) == (INVALID_ARGUMENT, True), end
    client.close()


def test_without_shared_memory_a_version_2_client_gets_version_1(
    slow: Upstream, start_sidecar: Start
) -> None:
    sidecar = start_sidecar(config(slow), "--frames-shared-region", "0")
    client = SharedClient(sidecar.frames_socket).open()
    assert client.region is None
    client.calls(call("big", "big"))
    client.read_results(1)
    assert client.results[0].result == BIG
    client.send(2)
    assert client.read_to_end().code == 0
    client.close()


def sidecar_fds(sidecar: SidecarProcess) -> int:
    assert sidecar.proc is not None
    return len(os.listdir(f"/proc/{sidecar.proc.pid}/fd"))


def test_regions_are_bounded_per_process_and_freed_with_their_stream(
    slow: Upstream, start_sidecar: Start
) -> None:
    """--max-undelivered-bytes 2MiB holds two 1 MiB regions: a third version 2 stream gets
    version 1 until one closes. 40 streams opened and closed leave no descriptor behind."""
    sidecar = start_sidecar(
        config(slow), "--frames-shared-region", "1MiB", "--max-undelivered-bytes", "2MiB"
    )
    assert_still_serves(sidecar)
    fds_before = sidecar_fds(sidecar)
    first, second = (SharedClient(sidecar.frames_socket).open() for _ in range(2))
    third = SharedClient(sidecar.frames_socket).open()
    assert (first.region is not None, second.region is not None, third.region) == (
        True,
        True,
        None,
    )
    assert wait_until(lambda: "every shared result region is taken" in sidecar.log_text(), 5)
    for client in (first, second, third):
        client.send(2)
        assert client.read_to_end().code == 0
        client.close()
    for _ in range(40):
        client = SharedClient(sidecar.frames_socket).open()
        assert client.region is not None
        client.calls(call("big", "big"))
        client.read_results(1)
        assert client.body(client.results[0]) == BIG
        client.send(2)
        assert client.read_to_end().code == 0
        client.close()
    assert wait_until(lambda: sidecar_fds(sidecar) <= fds_before, 5), (
        sidecar_fds(sidecar),
        fds_before,
    )


async def test_the_brains_client_copies_results_out_of_a_small_region_and_releases_it(
    slow: Upstream, start_sidecar: Start
) -> None:
    """SidecarClient over version 2 with a 1 MiB region: 200 concurrent ~256 KB calls,
    more than the region holds at once, come back byte for byte, each through the region
    or (if the client were slower to release than the room wait) on the socket; then
    sequential calls all use the region again, so the client released it."""
    sidecar = start_sidecar(config(slow), "--frames-shared-region", "1MiB")
    client = SidecarClient(
        sidecar.unix_target, options=ClientOptions(frames_socket=str(sidecar.frames_socket))
    )
    try:
        results = await asyncio.gather(*(client.call("big", {}) for _ in range(200)))
        assert all(r.ok and r.result_bytes == BIG for r in results)
        counts = shared_counts(sidecar)
        assert counts["shared"] + counts["full"] == 200, counts
        assert counts["shared"] >= 3, counts
        for _ in range(30):
            result = await client.call("big", {})
            assert result.result_bytes == BIG
        after = shared_counts(sidecar)
        assert after["full"] == counts["full"], (counts, after)
    finally:
        await client.aclose()


def test_a_stream_that_ends_gives_its_region_back_while_the_client_keeps_it(
    slow: Upstream, start_sidecar: Start
) -> None:
    """A client that keeps the region's descriptor and mapping after its stream ends must
    not keep the sidecar's memory: the region's pages are freed (it reads zeros), so a
    client that reconnects again and again cannot pile up regions."""
    sidecar = start_sidecar(config(slow), "--frames-shared-region", "1MiB")
    kept = []
    for round_ in range(3):
        client = SharedClient(sidecar.frames_socket).open()
        assert client.region is not None
        assert client.region_fd is not None
        client.calls(*(call(f"k{round_}-{i}", "big") for i in range(3)))
        client.read_results(3)
        assert all(client.body(r) == BIG for r in client.results)
        assert os.fstat(client.region_fd).st_blocks * 512 >= 3 * len(BIG)
        client.send(2)
        assert client.read_to_end().code == 0
        client.sock.close()  # the stream ends; the descriptor and the mapping stay
        kept.append(client)
    for client in kept:
        assert client.region_fd is not None
        assert wait_until(lambda c=client: os.fstat(c.region_fd).st_blocks == 0, 5)
        span = client.results[0].shared_result
        assert client.region is not None
        assert client.region[span.offset : span.offset + 64] == bytes(64)
        client.close()
