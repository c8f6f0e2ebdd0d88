"""The benchmark's tools, written once and rendered for every dispatcher.

The sidecar gets them as ``tools.yaml``; the Python dispatchers get the same
:class:`ToolSpec` objects, so every dispatcher sends the same request and checks the same
input and output schemas.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .documents import (
    CATALOG_FILE,
    CATALOG_SCHEMA,
    SEARCH_FILE,
    SEARCH_INPUT_SCHEMA,
    SEARCH_SCHEMA,
    TINY_FILE,
    TINY_INPUT_SCHEMA,
    TINY_SCHEMA,
)

#: Connections/calls in flight each dispatcher may have to one upstream: high enough for
#: scenario 3 (10,000 agents), the same for all three dispatchers.
MAX_CONNECTIONS = 20_000

#: Per-call deadline, the same everywhere.
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A GET tool whose arguments become query parameters."""

    name: str
    path: str
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]
    #: query parameter -> argument name
    query: Mapping[str, str] = field(default_factory=dict)
    #: Extra tools.yaml fields (e.g. ``rate_limits``), for scenarios that need them.
    sidecar_extra: Mapping[str, Any] = field(default_factory=dict)
    #: The sidecar calls it on nginx's HTTP/2 listener (``http: http2``); only the
    #: sidecar has such tools (aiohttp and httpx's default speak HTTP/1.1).
    http2: bool = False

    def url(self, base: str) -> str:
        return base.rstrip("/") + self.path

    def params(self, arguments: Mapping[str, Any]) -> dict[str, str]:
        """The query string, as the sidecar renders it (absent arguments are left out)."""
        return {q: str(arguments[a]) for q, a in self.query.items() if a in arguments}


SEARCH = ToolSpec("search", "/" + SEARCH_FILE, SEARCH_INPUT_SCHEMA, SEARCH_SCHEMA, {"q": "query"})
#: The same document through nginx's ``limit_rate``: a slow upstream (scenario 3).
SLOW_SEARCH = ToolSpec(
    "slow_search", "/slow/" + SEARCH_FILE, SEARCH_INPUT_SCHEMA, SEARCH_SCHEMA, {"q": "query"}
)
#: ``slow_search`` from nginx's HTTP/2 listener: every call a stream on one connection.
SLOW_SEARCH_H2 = ToolSpec(
    "slow_search_h2",
    "/slow/" + SEARCH_FILE,
    SEARCH_INPUT_SCHEMA,
    SEARCH_SCHEMA,
    {"q": "query"},
    http2=True,
)
PING = ToolSpec("ping", "/" + TINY_FILE, TINY_INPUT_SCHEMA, TINY_SCHEMA, {"n": "n"})
#: ``ping`` from nginx's HTTP/2 listener: the tiny call when the origin speaks HTTP/2
#: (requests share one connection, so the kernel's cost per call is shared too).
PING_H2 = ToolSpec(
    "ping_h2", "/" + TINY_FILE, TINY_INPUT_SCHEMA, TINY_SCHEMA, {"n": "n"}, http2=True
)
#: The second ~100 KB document (unicode, escapes, a ``$ref`` schema): issue 11.
CATALOG = ToolSpec(
    "catalog", "/" + CATALOG_FILE, SEARCH_INPUT_SCHEMA, CATALOG_SCHEMA, {"q": "query"}
)

TOOLS: tuple[ToolSpec, ...] = (SEARCH, SLOW_SEARCH, SLOW_SEARCH_H2, PING, PING_H2, CATALOG)

#: The ~100 KB documents every per-call CPU measurement runs on, by tool.
DOCUMENT_TOOLS = ("search", "catalog")
BY_NAME: dict[str, ToolSpec] = {t.name: t for t in TOOLS}


def arguments_for(tool: str, i: int) -> dict[str, Any]:
    """The arguments of call ``i`` (varied, so nothing can be cached by accident)."""
    if tool in ("ping", "ping_h2"):
        return {"n": i}
    return {"query": f"agent tool latency {i}", "limit": 10}


def sidecar_config(
    base_url: str, tools: Sequence[ToolSpec] = TOOLS, h2_base_url: str | None = None
) -> str:
    """``tools.yaml`` (JSON is YAML) for the sidecar, pointed at ``base_url``, and its
    HTTP/2 tools at ``h2_base_url`` (left out without it)."""
    entries = []
    upstreams: dict[str, dict[str, Any]] = {}
    for spec in tools:
        if spec.http2 and h2_base_url is None:
            continue
        base = h2_base_url if spec.http2 and h2_base_url is not None else base_url
        # The default per-origin bound (1024) would queue scenario 3's 10,000 calls; the
        # Python dispatchers get the same MAX_CONNECTIONS.
        upstream = upstreams.setdefault(base.rstrip("/"), {"max_concurrency": MAX_CONNECTIONS})
        if spec.http2:
            upstream["http"] = "http2"
        entries.append(
            {
                "name": spec.name,
                "description": f"Benchmark tool {spec.name}.",
                "input_schema": dict(spec.input_schema),
                "output_schema": dict(spec.output_schema),
                "request": {
                    "method": "GET",
                    "url": spec.url(base),
                    "query": {q: "{" + a + "}" for q, a in spec.query.items()},
                },
                "timeout": f"{int(CALL_TIMEOUT_S)}s",
                # nginx listens on loopback, which the egress guard refuses by default.
                "egress": {"allow": ["127.0.0.0/8"]},
                **spec.sidecar_extra,
            }
        )
    config = {
        "defaults": {"max_response_bytes": 4 * 1024 * 1024},
        "upstreams": upstreams,
        "tools": entries,
    }
    return json.dumps(config, indent=2)
