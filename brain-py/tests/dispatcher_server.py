"""A Dispatcher servicer on a loopback port, for the client tests' stand-in sidecars."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc.aio

from brain._proto.dispatch.v1 import dispatch_pb2_grpc as pb_grpc


@contextlib.asynccontextmanager
async def serving(servicer: pb_grpc.DispatcherServicer) -> AsyncIterator[str]:
    """Serves ``servicer``; yields the target (``127.0.0.1:PORT``), stops the server after."""
    server = grpc.aio.server()
    pb_grpc.add_DispatcherServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
