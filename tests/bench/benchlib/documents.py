"""The documents the upstream serves and the JSON Schemas every dispatcher checks them against.

The search document imitates a real tool response (a search API's page of results) of about
100 KB; its schema is what a careful tool author writes: types, required fields, no extra
properties, bounded strings and arrays, a pattern and an enum. No ``format`` keywords: the
sidecar asserts formats but Python's ``jsonschema`` only does with optional packages, and the
comparison must ask every validator for the same work.

Generated deterministically (seeded), so the Rust benchmark and the Python benchmark read
byte-identical files from ``fixtures/`` (``python -m benchlib.documents`` rewrites them).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SEARCH_FILE = "search_100k.json"
SEARCH_SCHEMA_FILE = "search_schema.json"
TINY_FILE = "tiny.json"

#: Bytes the search document aims at.
SEARCH_TARGET_BYTES = 100 * 1024

_WORDS = [
    *("agent", "tool", "call", "latency", "schema", "upstream", "gateway", "cluster"),
    *("budget", "token", "batch", "stream", "sidecar", "python", "rust", "memory"),
    *("socket", "deadline", "retry", "quota", "region", "replica", "vector", "index"),
    *("search", "result", "document", "cache", "policy", "trace", "metric", "event"),
    *("queue", "worker", "model", "planner"),
]

SEARCH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["query", "total", "took_ms", "results"],
    "additionalProperties": False,
    "properties": {
        "query": {"type": "string", "maxLength": 200},
        "total": {"type": "integer", "minimum": 0},
        "took_ms": {"type": "number", "minimum": 0},
        "results": {
            "type": "array",
            "maxItems": 1000,
            "items": {
                "type": "object",
                "required": ["id", "title", "url", "snippet", "score", "lang", "tags", "author"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": "^doc-[0-9]{6}$"},
                    "title": {"type": "string", "minLength": 1, "maxLength": 300},
                    "url": {"type": "string", "maxLength": 2048},
                    "snippet": {"type": "string", "maxLength": 2000},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "lang": {"enum": ["en", "de", "fr", "es", "ja"]},
                    "published": {"type": "string", "maxLength": 32},
                    "tags": {
                        "type": "array",
                        "maxItems": 16,
                        "items": {"type": "string", "maxLength": 64},
                    },
                    "author": {
                        "type": "object",
                        "required": ["id", "name"],
                        "additionalProperties": False,
                        "properties": {
                            "id": {"type": "integer", "minimum": 1},
                            "name": {"type": "string", "maxLength": 120},
                        },
                    },
                    "metrics": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
    },
}

#: The arguments every search call sends, and their schema.
SEARCH_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["query"],
    "additionalProperties": False,
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 200},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
    },
}

TINY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "value"],
    "properties": {"ok": {"type": "boolean"}, "value": {"type": "integer"}},
}

TINY_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "additionalProperties": False,
}

#: Fields a ``select`` call asks for instead of the whole search document.
SEARCH_SELECT = ("/total", "/results/0/title", "/results/0/url")


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _result(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "id": f"doc-{i:06d}",
        "title": _sentence(rng, rng.randint(5, 10)),
        "url": f"https://docs.example.com/{rng.choice(_WORDS)}/{i}/{rng.choice(_WORDS)}",
        "snippet": " ".join(_sentence(rng, rng.randint(8, 14)) for _ in range(3)),
        "score": round(rng.random(), 6),
        "lang": rng.choice(["en", "en", "en", "de", "fr", "es", "ja"]),
        "published": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z",
        "tags": [rng.choice(_WORDS) for _ in range(rng.randint(2, 5))],
        "author": {"id": rng.randint(1, 10_000), "name": _sentence(rng, 2)[:-1]},
        "metrics": {"views": rng.randint(0, 100_000), "likes": rng.randint(0, 5_000)},
    }


def search_document() -> dict[str, Any]:
    """About :data:`SEARCH_TARGET_BYTES` of search results (the same every time)."""
    rng = random.Random(20261121)
    doc: dict[str, Any] = {"query": "agent tool latency", "total": 0, "took_ms": 12.5}
    results: list[dict[str, Any]] = []
    while len(encode(doc | {"results": results})) < SEARCH_TARGET_BYTES:
        results.append(_result(rng, len(results) + 1))
    doc["results"] = results
    doc["total"] = len(results)
    return doc


def tiny_document() -> dict[str, Any]:
    return {"ok": True, "value": 42}


def encode(value: Any) -> bytes:
    """Compact JSON, as an API would send it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def fixture_bytes() -> dict[str, bytes]:
    """The fixture files, by name, as they should be on disk."""
    return {
        SEARCH_FILE: encode(search_document()),
        SEARCH_SCHEMA_FILE: json.dumps(SEARCH_SCHEMA, indent=2).encode() + b"\n",
        TINY_FILE: encode(tiny_document()),
    }


def stale_fixtures() -> list[str]:
    """Fixture files missing or different from what the generator makes now."""
    return [
        name
        for name, data in fixture_bytes().items()
        if not (FIXTURES / name).exists() or (FIXTURES / name).read_bytes() != data
    ]


def write_fixtures() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, data in fixture_bytes().items():
        (FIXTURES / name).write_bytes(data)


if __name__ == "__main__":
    write_fixtures()
    sizes = {name: len(data) for name, data in fixture_bytes().items()}
    print(json.dumps(sizes), file=sys.stderr)
