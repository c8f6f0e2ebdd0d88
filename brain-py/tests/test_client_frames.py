"""The Dispatch frames SidecarClient writes: joined from each call's encoded bytes rather
than built as a DispatchFrame, they must still be exactly what protobuf would send. A
real gRPC server in the test process parses them with the generated DispatchFrame."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dispatcher_server import serving

from brain import ClientOptions, SidecarClient, Status
from brain._client import _tool_call
from brain._proto.dispatch.v1 import dispatch_pb2 as pb
from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from brain._wire import CANCEL_TAG, encode_call, frame_field


def test_joined_fields_parse_as_the_frame_protobuf_builds() -> None:
    # Lengths on both sides of each varint byte boundary (127/128, 16383/16384).
    sizes = (0, 100, 127, 128, 16_380, 16_384, 300_000)
    args = [(str(i), "t", b'"' + b"x" * n + b'"', f"agent-{i}") for i, n in enumerate(sizes)]
    calls = [_tool_call(*a, 2.5, {"k": "v"}, ("/a",)) for a in args]
    cancels = ["7", "x" * 200]
    joined = b"".join(
        [frame_field(CANCEL_TAG, c.encode()) for c in cancels]
        + [encode_call(*a, 2.5, {"k": "v"}, ("/a",)) for a in args]
    )
    expected = pb.DispatchFrame(calls=calls, cancel_call_ids=cancels)
    assert pb.DispatchFrame.FromString(joined) == expected
    assert len(joined) == expected.ByteSize()


class RecordingSidecar(pb_grpc.DispatcherServicer):
    """Keeps every call it receives and answers each with its arguments."""

    def __init__(self) -> None:
        self.calls: list[pb.ToolCall] = []

    async def Dispatch(
        self, request_iterator: AsyncIterator[pb.DispatchFrame], context: object
    ) -> AsyncIterator[pb.ResultFrame]:
        async for frame in request_iterator:
            self.calls.extend(frame.calls)
            yield pb.ResultFrame(
                results=[
                    pb.ToolResult(call_id=c.call_id, status=pb.STATUS_OK, result=c.arguments)
                    for c in frame.calls
                ]
            )


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[RecordingSidecar, str]]:
    servicer = RecordingSidecar()
    async with serving(servicer) as target:
        yield servicer, target


@pytest.mark.parametrize("linger", [0.0, 0.0005, 0.005])
async def test_every_field_of_every_call_arrives(
    sidecar: tuple[RecordingSidecar, str], linger: float
) -> None:
    servicer, target = sidecar
    options = ClientOptions(write_linger=linger)
    async with SidecarClient(target, options=options) as client:
        await client.wait_connected(10)
        results = await asyncio.gather(
            *(
                client.call(
                    "weather",
                    {"city": "Oslo" * i},
                    agent_id=f"a{i}",
                    timeout=1.5,
                    metadata={"traceparent": f"t{i}"} if i % 2 else None,
                    select=("/temp",) if i % 3 else (),
                )
                for i in range(300)
            )
        )
        assert [r.status for r in results] == [Status.OK] * 300
        assert [r.json() for r in results] == [{"city": "Oslo" * i} for i in range(300)]
        assert client.frames_sent < 300
    by_agent = {c.agent_id: c for c in servicer.calls}
    assert len(servicer.calls) == len(by_agent) == 300
    for i in range(300):
        call = by_agent[f"a{i}"]
        assert (call.tool, call.timeout_ms) == ("weather", 1500)
        assert dict(call.metadata) == ({"traceparent": f"t{i}"} if i % 2 else {})
        assert list(call.select) == (["/temp"] if i % 3 else [])
