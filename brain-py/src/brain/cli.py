"""The ``brain`` command.

``brain demo`` runs the demo workload against a running sidecar; ``brain tools`` lists
the sidecar's tools. (The agent API server and LLM planners arrive with ``brain serve``.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from ._client import SidecarClient
from ._demo import run_demo
from ._exceptions import BrainError

__all__ = ["main"]

DEFAULT_SIDECAR = "unix:/tmp/tandem/sidecar.sock"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brain", description=__doc__)
    parser.add_argument(
        "--sidecar",
        default=DEFAULT_SIDECAR,
        help="sidecar gRPC target: unix:/path.sock or host:port (default: %(default)s)",
    )
    parser.add_argument("--log-level", default="WARNING", help="Python log level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run concurrent demo agents through the sidecar")
    demo.add_argument("--agents", type=int, default=120, help="concurrent agents")
    demo.add_argument("--seed", type=int, default=7, help="seed for the task mix")
    sub.add_parser("tools", help="list the sidecar's tools")
    return parser


async def _demo(target: str, agents: int, seed: int) -> int:
    async with SidecarClient(target) as client:
        report = await run_demo(client, agents=agents, seed=seed)
    print(report.render())
    return 0 if report.agents_done == agents and not report.errors else 1


async def _tools(target: str) -> int:
    async with SidecarClient(target) as client:
        for tool in await client.list_tools():
            limits = ", ".join(f"{r.rate}/{r.period_ms}ms per {r.scope}" for r in tool.rate_limits)
            print(f"{tool.name:<16} {tool.description.split('.')[0][:70]}")
            args = ", ".join(tool.input_schema.get("properties", {}))
            print(f"{'':<16} args: {args}" + (f"; limits: {limits}" if limits else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "demo":
            if args.agents < 1:
                print("brain: --agents must be at least 1", file=sys.stderr)
                return 2
            return asyncio.run(_demo(args.sidecar, args.agents, args.seed))
        return asyncio.run(_tools(args.sidecar))
    except BrainError as exc:
        print(f"brain: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
