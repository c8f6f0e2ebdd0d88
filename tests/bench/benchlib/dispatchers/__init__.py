"""The dispatchers compared by ``make bench``; every one runs inside the agent process.

* ``tandem``: :class:`brain.SidecarClient` on the sidecar's unix socket (one Dispatch
  stream, calls made in the same loop tick share a frame); the sidecar does the HTTP,
  parsing and validation. ``tandem-unary`` uses ``invoke()`` (one RPC per call, no
  coalescing) for scenario 4.
* ``python-naive``: httpx + ``json`` + ``jsonschema`` on the default asyncio loop.
* ``python-tuned``: aiohttp + orjson + jsonschema-rs on uvloop.
* ``null``: answers at once, to measure what the agent loop itself costs.
"""

from __future__ import annotations

from .base import Dispatcher, Outcome, make_dispatcher

__all__ = ["DISPATCHERS", "Dispatcher", "Outcome", "make_dispatcher"]

#: The dispatchers compared in every scenario, in table order.
DISPATCHERS = ("tandem", "python-naive", "python-tuned")
