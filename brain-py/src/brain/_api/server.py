"""``brain serve``: the HTTP API on uvicorn (uvloop), with a drain on SIGTERM.

Shutdown is a parameter: :func:`serve` runs until ``stop`` is set (``main`` sets it on
SIGTERM or SIGINT), then:

1. stops admitting runs (``POST /v1/runs`` answers 503, ``/readyz`` 503),
2. lets runs in flight finish for up to ``drain_timeout`` seconds, then cancels the rest
   (each records ``cancelled``/``shutdown``; their tool calls are cancelled in the sidecar),
3. stops the HTTP server (waiting answers and event streams have ended by then),
4. closes the planner and the sidecar client.

What the server admits (connections, request heads and bodies) is bounded by
:class:`~.limits.HttpLimits`; :func:`serve` raises the process's open-file limit to hold
``max_connections`` where the hard limit allows.

If the planner fails to load its model, the server stops the same way at once and
:func:`serve` returns 1. uvicorn's own signal handling is switched off: it would stop the
server at once, without the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from .._brain import Brain
from .app import create_app
from .limits import HttpLimits
from .protocol import api_protocol

__all__ = ["bind", "serve"]

log = logging.getLogger("brain.server")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The brain handles SIGTERM itself (drain first); see serve().
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


#: File descriptors the brain needs besides its API connections: the sidecar's channels,
#: the planner's HTTP connections, model files, logs.
_OTHER_FILES = 1024


def _room_for_connections(connections: int) -> None:
    """Raise the soft open-file limit so ``connections`` fit, as far as the hard limit
    allows (many hosts start processes at a soft 1,024; containers usually at the hard
    limit). Past it, accepting fails with EMFILE, so say so at the start."""
    wanted = connections + _OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        if soft < wanted:
            log.warning(
                "the open-file limit (%d) is under max_connections + %d (%d): "
                "connections past it fail to be accepted",
                soft,
                _OTHER_FILES,
                wanted,
            )


async def serve(
    brain: Brain,
    sock: socket.socket,
    stop: asyncio.Event,
    *,
    drain_timeout: float,
    on_listening: Callable[[str], None] | None = None,
    limits: HttpLimits | None = None,
) -> int:
    """Serve the API on ``sock`` until ``stop`` is set, then drain. Returns an exit code."""
    limits = limits or HttpLimits()
    _room_for_connections(limits.max_connections)
    config = uvicorn.Config(
        create_app(brain, limits),
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
        # Connection caps and a deadline on request heads: see protocol.py.
        http=api_protocol(limits, brain.metrics.http),
    )
    server = _Server(config)
    await brain.start()
    server_task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    # uvicorn says it is listening only through this flag.
    while not server.started and not server_task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if server_task.done():
        await brain.aclose()
        server_task.result()
        return 1
    log.info("brain listening url=%s planner=%s", url, brain.planner.name)
    if on_listening is not None:
        on_listening(url)
    stopped = asyncio.create_task(stop.wait())
    planner = asyncio.create_task(brain.planner_started())
    waiting: set[asyncio.Future[Any]] = {stopped, server_task, planner}
    code = 0
    while True:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if done == {planner}:
            waiting.discard(planner)
            if planner.result() is None:
                continue  # loaded; serve until told to stop
            log.error("the planner failed to start, exiting: %r", planner.result())
            code = 1
        break
    if server_task.done():
        log.error("the HTTP server stopped unexpectedly")
        code = 1
    else:
        report = await brain.drain(0 if code else drain_timeout)
        log.info(
            "drained finished=%d cancelled=%d seconds=%.2f",
            report.finished,
            report.cancelled,
            report.seconds,
        )
        if report.cancelled:
            log.warning(
                "drain timeout of %.1fs passed; cancelled %d runs", drain_timeout, report.cancelled
            )
        server.should_exit = True
        await server_task
    planner.cancel()
    stopped.cancel()
    await brain.aclose()
    log.info("brain stopped")
    return code
