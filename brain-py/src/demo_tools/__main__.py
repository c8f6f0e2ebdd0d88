"""``python -m demo_tools --host 127.0.0.1 --port 8081``: serve the demo tools.

Prints ``demo-tools listening on http://HOST:PORT`` once the socket is bound
(with the real port when ``--port 0``), so that a runner can wait for that line
instead of polling, and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import create_app


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="demo-tools", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8081, help="port to bind; 0 picks a free one (default 8081)"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off: it slows load tests)"
    )
    return parser.parse_args(argv)


def _bound_port(runner: web.AppRunner) -> int:
    """The port actually bound, which differs from the requested one for port 0."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the app is not listening on a TCP socket")


async def serve(host: str, port: int, *, access_log: bool = False) -> None:
    """Runs the app until SIGTERM or SIGINT, then shuts it down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    access_logger = logging.getLogger("aiohttp.access") if access_log else None
    runner = web.AppRunner(create_app(), access_log=access_logger)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        shown = f"[{host}]" if ":" in host else host
        print(f"demo-tools listening on http://{shown}:{_bound_port(runner)}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``demo-tools`` script)."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.access_log else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(args.host, args.port, access_log=args.access_log))
    except OSError as exc:  # e.g. the port is taken: say so, without a traceback
        print(f"demo-tools: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
