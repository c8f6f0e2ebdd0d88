"""Fixtures that start real parts: loopback upstreams and the sidecar binary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop

import demo_tools.process as demo_service
import hostile.streams as hostile_streams
from brain import ClientOptions, SidecarClient

from harness import SidecarProcess, Upstream

#: Test modules that run on uvloop, as the brain does (uvloop's transports are not
#: asyncio's, and the frames transport is written on them); the others on asyncio's loop.
ON_UVLOOP = {"test_dispatch"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.module is not None and item.module.__name__ in ON_UVLOOP:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def demo_tools() -> Iterator[str]:
    """The demo tool service (weather, calculator, units, clock, search) on a free port;
    yields its base URL."""
    with demo_service.running() as url:
        yield url


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Start a sidecar with the given tools YAML (and extra flags); killed at teardown."""
    started: list[SidecarProcess] = []

    def start(config: str, *args: str, env: dict[str, str] | None = None) -> SidecarProcess:
        workdir = tmp_path / f"sidecar{len(started)}"
        workdir.mkdir()
        proc = SidecarProcess(workdir, config, *args, env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def transport() -> str:
    """Where ``client_for``'s clients send their calls: "grpc" (the Dispatch stream on the
    gRPC target), or "frames" (on the harness sidecar's frames socket, ``frames.sock``
    beside ``sidecar.sock``). A module overrides this to run its tests on both."""
    return "grpc"


@pytest.fixture
def slow(upstream: Upstream) -> Upstream:
    """The upstream with the hostile suites' routes: /slow, /big and /fast."""
    return hostile_streams.serve_slow(upstream)


@pytest.fixture
async def client_for(transport: str) -> AsyncIterator[Callable[..., SidecarClient]]:
    """Clients connected to a sidecar, on ``transport``; closed at teardown. A TCP target
    has no frames socket and stays on gRPC."""
    clients: list[SidecarClient] = []

    def make(target: str, **options: object) -> SidecarClient:
        if transport == "frames" and target.startswith("unix:"):
            frames = Path(target.removeprefix("unix:")).with_name("frames.sock")
            options.setdefault("frames_socket", str(frames))
        client = SidecarClient(target, options=ClientOptions(**options))  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
