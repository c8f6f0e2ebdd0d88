"""What the API's HTTP server admits: connections, request heads and request bodies.

The API's port is open to the cluster and uvicorn bounds none of these by itself: every
connection was accepted and kept, a request body was read whole into memory whatever its
size (a 300 MB ``POST /v1/runs`` took 300 MB), and a body that trickled in held its
connection and request for good. :mod:`.protocol` enforces the connection caps and the
head deadline, :mod:`.body` the body's size and deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HttpLimits"]


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """The API server's bounds; the defaults are ``brain serve``'s."""

    #: Seconds a new connection may take to send its first request head (later heads:
    #: uvicorn's keep-alive time after the previous response).
    head_timeout: float = 10.0
    #: Connections open at once. One more is answered 503 with ``Retry-After`` and closed
    #: at once, before anything of it is read. Each idle connection holds ~5 KB and a file
    #: descriptor; a run's waiting client (``?wait=true``) or follower holds one too.
    max_connections: int = 10_000
    #: Connections open at once from one address, so that one client (or a flood from
    #: one pod) cannot take every connection and starve the rest, the kubelet's probes
    #: included. Behind a proxy that funnels all clients through a few addresses, raise
    #: it to ``max_connections``.
    max_connections_per_peer: int = 2_048
    #: Bytes a request body may have. A larger declared body is answered 413 without
    #: being read; a chunked one at the first byte past the limit. The largest valid
    #: ``POST /v1/runs`` (two 20,000-character texts, every character escaped) is ~250 KB.
    max_body_bytes: int = 1 << 20
    #: Seconds from a request's head to the end of its body: a later body is answered
    #: 408 and its connection closed (a body trickled in otherwise held both for good).
    body_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("head_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("max_connections", "max_connections_per_peer", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
