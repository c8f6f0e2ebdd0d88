"""``SidecarClient.aclose`` ends the client's reconnect loop even when the stream being
opened turns the cancellation into an error of its own, as grpc.aio can (a cancelled
call surfaces as ``AioRpcError(CANCELLED)``). The loop then saw a broken stream, backed
off and reconnected for ever, and ``aclose`` waited on it for ever: a teardown that timed
out in ``tests/test_security.py`` once, with the anonymous client's UNAUTHENTICATED
reconnects still logging."""

from __future__ import annotations

import asyncio
from pathlib import Path

from brain import ClientOptions, SidecarClient
from brain._frames import FramedStreamError


class SwallowsTheCancel:
    """A stream whose opening never completes, and answers cancellation with an error."""

    opened = 0

    async def wait_for_connection(self) -> None:
        SwallowsTheCancel.opened += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise FramedStreamError("CANCELLED: the call was cancelled") from None

    def cancel(self) -> None:
        pass


async def test_close_ends_the_reconnect_loop_when_the_stream_swallows_the_cancel(
    tmp_path: Path,
) -> None:
    client = SidecarClient(
        f"unix:{tmp_path / 'none.sock'}",
        options=ClientOptions(backoff_initial=0.001, backoff_max=0.002),
    )
    client._open_stream = SwallowsTheCancel  # type: ignore[method-assign]
    await client.start()
    await asyncio.sleep(0.05)
    assert SwallowsTheCancel.opened == 1
    await asyncio.wait_for(client.aclose(), 5)
    assert SwallowsTheCancel.opened == 1
