"""The documents the upstream serves and the JSON Schemas every dispatcher checks them against.

The search document imitates a real tool response (a search API's page of results) of about
100 KB; its schema is what a careful tool author writes: types, required fields, no extra
properties, bounded strings and arrays, a pattern and an enum. No ``format`` keywords: the
sidecar asserts formats but Python's ``jsonschema`` only does with optional packages, and the
comparison must ask every validator for the same work.

The catalog document (issue 11: no result may depend on one document) has another shape:
a product catalog of about 100 KB, mostly non-ASCII text (accents, CJK, emoji), strings
full of escapes (quotes, backslashes, newlines, tabs, control characters), half of the
products encoded with ``\\uXXXX`` escapes (surrogate pairs for emoji) and half as raw
UTF-8, nesting four levels deep, and a schema built from ``$defs`` joined by ``$ref``
(money inside price inside variant inside product, and a recursive category tree).

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
CATALOG_FILE = "catalog_100k.json"
CATALOG_SCHEMA_FILE = "catalog_schema.json"

#: Bytes the search document (and the catalog document) aims at.
SEARCH_TARGET_BYTES = 100 * 1024
CATALOG_TARGET_BYTES = 100 * 1024

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


CATALOG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["catalog", "locale", "generated", "categories", "products"],
    "additionalProperties": False,
    "properties": {
        "catalog": {"type": "string", "maxLength": 200},
        "locale": {"enum": ["de-DE", "fr-FR", "ja-JP", "en-US"]},
        "generated": {"type": "integer", "minimum": 0},
        "categories": {"type": "array", "maxItems": 64, "items": {"$ref": "#/$defs/category"}},
        "products": {"type": "array", "maxItems": 1000, "items": {"$ref": "#/$defs/product"}},
    },
    "$defs": {
        "text": {"type": "string", "minLength": 1, "maxLength": 4000},
        "money": {
            "type": "object",
            "required": ["amount", "currency"],
            "additionalProperties": False,
            "properties": {
                "amount": {"type": "number", "minimum": 0},
                "currency": {"enum": ["EUR", "JPY", "USD", "CHF"]},
            },
        },
        "price": {
            "type": "object",
            "required": ["list", "sale"],
            "additionalProperties": False,
            "properties": {
                "list": {"$ref": "#/$defs/money"},
                "sale": {"anyOf": [{"$ref": "#/$defs/money"}, {"type": "null"}]},
            },
        },
        "variant": {
            "type": "object",
            "required": ["sku", "label", "price", "stock"],
            "additionalProperties": False,
            "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{5}$"},
                "label": {"$ref": "#/$defs/text"},
                "price": {"$ref": "#/$defs/price"},
                "stock": {"type": "integer", "minimum": 0},
                "attributes": {
                    "type": "object",
                    "additionalProperties": {"$ref": "#/$defs/text"},
                },
            },
        },
        "category": {
            "type": "object",
            "required": ["id", "name"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "name": {"$ref": "#/$defs/text"},
                "children": {
                    "type": "array",
                    "maxItems": 16,
                    "items": {"$ref": "#/$defs/category"},
                },
            },
        },
        "product": {
            "type": "object",
            "required": ["id", "name", "description", "category", "variants", "tags"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "name": {"$ref": "#/$defs/text"},
                "description": {"$ref": "#/$defs/text"},
                "category": {"type": "integer", "minimum": 1},
                "variants": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 8,
                    "items": {"$ref": "#/$defs/variant"},
                },
                "tags": {
                    "type": "array",
                    "maxItems": 12,
                    "uniqueItems": True,
                    "items": {"type": "string", "maxLength": 64},
                },
                "rating": {"type": ["number", "null"], "minimum": 0, "maximum": 5},
            },
        },
    },
}

#: Words of the catalog: accented Latin, CJK, emoji (outside the BMP: surrogate pairs
#: when escaped), and ASCII, so parsers meet every UTF-8 length.
_CATALOG_WORDS = [
    *("Größe", "Kürbis", "crème", "brûlée", "façade", "naïve", "smørrebrød", "Ærø"),
    *("東京", "寿司", "ラーメン", "抹茶", "日本語", "カタログ", "価格", "在庫"),
    *("☕", "🍣", "🚀", "📦", "✨", "🧪", "€", "¥"),
    *("steel", "cotton", "linen", "oak", "glass", "wool", "copper", "clay"),
]

#: Text that JSON must escape: quotes, backslashes, control characters.
_ESCAPED = [
    '"quoted"',
    "C:\\catalog\\items",
    "line one\nline two",
    "tab\tseparated",
    "bell\u0007and\u001fsep",
    '<tag attr="v">',
    'back\\slash "and" quote',
]

_CURRENCIES = ["EUR", "JPY", "USD", "CHF"]


def _catalog_text(rng: random.Random, words: int) -> str:
    parts = [rng.choice(_CATALOG_WORDS) for _ in range(words)]
    parts.insert(rng.randrange(len(parts) + 1), rng.choice(_ESCAPED))
    return " ".join(parts)


def _money(rng: random.Random) -> dict[str, Any]:
    return {"amount": round(rng.uniform(0.5, 5000), 2), "currency": rng.choice(_CURRENCIES)}


def _product(rng: random.Random, i: int, categories: int) -> dict[str, Any]:
    variants = []
    for v in range(rng.randint(1, 4)):
        variants.append(
            {
                "sku": f"{rng.choice(['ABC', 'KUB', 'TKY', 'XYZ'])}-{i * 10 + v:05d}",
                "label": _catalog_text(rng, rng.randint(2, 4)),
                "price": {
                    "list": _money(rng),
                    "sale": _money(rng) if rng.random() < 0.4 else None,
                },
                "stock": rng.randint(0, 500),
                "attributes": {
                    "material": rng.choice(_CATALOG_WORDS),
                    "note": _catalog_text(rng, rng.randint(1, 3)),
                },
            }
        )
    return {
        "id": i,
        "name": _catalog_text(rng, rng.randint(2, 5)),
        "description": _catalog_text(rng, rng.randint(10, 24)),
        "category": rng.randint(1, categories),
        "variants": variants,
        "tags": sorted({rng.choice(_CATALOG_WORDS) for _ in range(rng.randint(1, 5))}),
        "rating": round(rng.uniform(0, 5), 1) if rng.random() < 0.8 else None,
    }


def _category(rng: random.Random, next_id: list[int], depth: int) -> dict[str, Any]:
    next_id[0] += 1
    node: dict[str, Any] = {"id": next_id[0], "name": _catalog_text(rng, 2)}
    if depth < 3:
        node["children"] = [_category(rng, next_id, depth + 1) for _ in range(rng.randint(1, 3))]
    return node


def catalog_document() -> tuple[dict[str, Any], bytes]:
    """About :data:`CATALOG_TARGET_BYTES` of catalog (the same every time), and its bytes:
    every other product is written with ``\\uXXXX`` escapes, the rest as raw UTF-8."""
    rng = random.Random(20261202)
    next_id = [0]
    categories = [_category(rng, next_id, 0) for _ in range(4)]
    head: dict[str, Any] = {
        "catalog": "Frühjahr 2026 — 春のカタログ 🌸",
        "locale": "de-DE",
        "generated": 1_790_000_000,
        "categories": categories,
    }
    products: list[dict[str, Any]] = []
    encoded: list[bytes] = []
    size = len(encode(head)) + len(b',"products":[]')
    while size < CATALOG_TARGET_BYTES:
        product = _product(rng, len(products) + 1, next_id[0])
        raw = json.dumps(product, separators=(",", ":"), ensure_ascii=len(products) % 2 == 1)
        products.append(product)
        encoded.append(raw.encode())
        size += len(encoded[-1]) + 1
    doc = head | {"products": products}
    body = encode(head)[:-1] + b',"products":[' + b",".join(encoded) + b"]}"
    return doc, body


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
        CATALOG_FILE: catalog_document()[1],
        CATALOG_SCHEMA_FILE: json.dumps(CATALOG_SCHEMA, indent=2, ensure_ascii=False).encode()
        + b"\n",
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
