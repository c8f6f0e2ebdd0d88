"""SidecarClient's deadlines: what a finished call leaves behind, and TIMEOUT when the
sidecar goes silent. A real gRPC server in the test process plays the sidecar's
Dispatch stream (answering every call, or none), so the client runs unmodified."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from dispatcher_server import serving

from brain import ClientOptions, SidecarClient, Status
from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc


class FakeSidecar(pb_grpc.DispatcherServicer):
    """Answers each call OK at once, or (``silent``) never; records calls and cancels.
    It runs on the test's event loop, so tests await ``changed`` instead of polling."""

    def __init__(self) -> None:
        self.silent = False
        self.received: list[str] = []
        self.cancelled: list[str] = []
        self.changed = asyncio.Condition()

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds after a frame arrives, at most ``timeout`` s."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(condition)

    async def Dispatch(
        self, request_iterator: AsyncIterator[pb.DispatchFrame], context: object
    ) -> AsyncIterator[pb.ResultFrame]:
        async for frame in request_iterator:
            async with self.changed:
                self.cancelled.extend(frame.cancel_call_ids)
                self.received.extend(c.call_id for c in frame.calls)
                self.changed.notify_all()
            if frame.calls and not self.silent:
                yield pb.ResultFrame(
                    results=[
                        pb.ToolResult(call_id=c.call_id, status=pb.STATUS_OK, result=b"{}")
                        for c in frame.calls
                    ]
                )


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[FakeSidecar, str]]:
    servicer = FakeSidecar()
    async with serving(servicer) as target:
        yield servicer, target


async def test_finished_calls_leave_no_deadline_behind(sidecar: tuple[FakeSidecar, str]) -> None:
    """Calls with hour-long timeouts that finish leave nothing pending: the client's
    memory follows the calls in flight, not the call rate times the timeout."""
    _, target = sidecar
    calls = 3000
    async with SidecarClient(target, options=ClientOptions(default_timeout=3600.0)) as client:
        await client.wait_connected(10)
        started = time.monotonic()
        results = await asyncio.gather(*(client.call("t", {"i": i}) for i in range(calls)))
        took = time.monotonic() - started
        assert [r.status for r in results] == [Status.OK] * calls
        assert client.pending == 0
        assert len(client._deadlines) == 0
        # Emptied buckets wait for their tick: at most one per tick of the time the calls
        # took to make, whatever their number.
        assert client._deadlines.buckets <= int(took / client._deadlines.TICK) + 2
        # The client still serves.
        assert (await client.call("t", {})).ok
        assert len(client._deadlines) == 0


async def test_silent_sidecar_still_gets_timeout(sidecar: tuple[FakeSidecar, str]) -> None:
    """A call the sidecar never answers ends with TIMEOUT at its timeout plus the grace,
    and the sidecar is told to cancel it."""
    servicer, target = sidecar
    servicer.silent = True
    options = ClientOptions(grace=0.05)
    async with SidecarClient(target, options=options) as client:
        await client.wait_connected(10)
        started = time.monotonic()
        result = await asyncio.wait_for(client.call("t", {}, timeout=0.1), timeout=5)
        took = time.monotonic() - started
        assert result.status == Status.TIMEOUT
        assert "deadline" in result.error
        assert 0.15 <= took < 3.0, took
        assert client.pending == 0
        assert len(client._deadlines) == 0
        await servicer.until(lambda: result.call_id in servicer.cancelled)
        # An answering sidecar gets OK again on the same client.
        servicer.silent = False
        assert (await client.call("t", {}, timeout=5)).status == Status.OK


async def test_cancelled_call_leaves_no_deadline_behind(sidecar: tuple[FakeSidecar, str]) -> None:
    servicer, target = sidecar
    servicer.silent = True
    async with SidecarClient(target, options=ClientOptions(default_timeout=3600.0)) as client:
        await client.wait_connected(10)
        task = asyncio.create_task(client.call("t", {}))
        await servicer.until(lambda: len(servicer.received) == 1)
        assert len(client._deadlines) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.pending == 0
        assert len(client._deadlines) == 0
        await servicer.until(lambda: servicer.received[0] in servicer.cancelled)
