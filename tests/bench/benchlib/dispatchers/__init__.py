"""The dispatchers compared by ``make bench``; every one runs inside the agent process.

* ``tandem``: :class:`brain.SidecarClient` with its Dispatch stream on the sidecar's
  frames socket, as the brain runs in a pod (calls made in the same loop tick share a
  frame); the sidecar does the HTTP, parsing and validation. For scenario 4,
  ``tandem-grpc`` runs the same stream on gRPC and ``tandem-unary`` uses ``invoke()``
  (one RPC per call, no coalescing).
* ``python-naive``: httpx + ``json`` + ``jsonschema`` on the default asyncio loop.
* ``python-tuned``: aiohttp + orjson + jsonschema-rs on uvloop.
* ``null``: answers at once, to measure what the agent loop itself costs.
* ``python-tuned xN`` (a label, not a dispatcher): python-tuned in N agent processes, one
  per core, each pinned to its core; what a Python team does to use more cores.
"""

from __future__ import annotations

from typing import Any

from .base import Dispatcher, Outcome, make_dispatcher

__all__ = ["DISPATCHERS", "Dispatcher", "Outcome", "make_dispatcher", "multi_label", "stacks"]

#: The dispatchers compared in every scenario, in table order.
DISPATCHERS = ("tandem", "python-naive", "python-tuned")


def multi_label(processes: int) -> str:
    """The label of python-tuned run as ``processes`` processes (one per core)."""
    return f"python-tuned x{processes}"


def stacks(processes: int, *, pin: bool = True) -> dict[str, dict[str, Any]]:
    """What scenarios 1, 3 and 8 compare, by label: the three dispatchers, and (when there
    is more than one core) python-tuned as one process per core, the agents split between
    them, each process pinned to its core with ``taskset -c`` unless ``pin`` is false
    (:mod:`benchlib.runner`)."""
    out: dict[str, dict[str, Any]] = {d: {"dispatcher": d} for d in DISPATCHERS}
    if processes > 1:
        out[multi_label(processes)] = {
            "dispatcher": "python-tuned",
            "processes": processes,
            "pin": pin,
        }
    return out
