"""``select`` for the Python dispatchers: JSON Pointers (RFC 6901) into a parsed document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _resolve(document: Any, pointer: str) -> Any:
    node = document
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(token)
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def select_pointers(document: Any, pointers: Sequence[str]) -> dict[str, Any]:
    """``{pointer: value}``; ``None`` where nothing is there (as the sidecar does)."""
    return {p: _resolve(document, p) for p in pointers}
