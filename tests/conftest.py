"""Fixtures that start real parts: loopback upstreams and the sidecar binary."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import demo_tools.process as demo_service
from brain import ClientOptions, SidecarClient

from harness import SidecarProcess, Upstream


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
async def client_for() -> AsyncIterator[Callable[..., SidecarClient]]:
    """Clients connected to a sidecar; closed at teardown."""
    clients: list[SidecarClient] = []

    def make(target: str, **options: object) -> SidecarClient:
        client = SidecarClient(target, options=ClientOptions(**options))  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
