"""A canary for credentials: every encoding a secret can take on its way out, and every
channel it could leave the sidecar by.

* :func:`echoes` writes a secret the ways a careless upstream echoes it: raw, JSON-escaped
  (``\\/``, ``\\uXXXX`` in either case, a per-character mixture), percent-encoded (either
  case, ``+`` for spaces), base64 of ``user:secret`` at every alignment, as a JSON key.
* :func:`leaks` looks for a secret in a text in every one of those forms, plus any
  10-character window of it, so a partly masked echo is caught too.
* :class:`Channels` collects what left a sidecar: every string of every result (status
  text, body, error, violations, limited_by), every ListTools reply, the log lines (the
  sidecar runs with ``RUST_LOG=debug`` and JSON logs), every string of every exported span
  (OTLP, received by :class:`test_operations.Collector`), and ``/metrics``.
"""

from __future__ import annotations

import base64
import json
import random
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

#: Base64 runs shorter than this are not searched for: too short to be the secret's.
MIN_BASE64_RUN = 8
#: A leftover of this many characters of the raw secret counts as a leak.
WINDOW = 10


def _json_escapes(secret: str) -> list[str]:
    """The JSON string bodies (no quotes) an encoder may write for ``secret``."""
    plain = json.dumps(secret, ensure_ascii=False)[1:-1]
    ascii_only = json.dumps(secret)[1:-1]
    every_lower = "".join(_u_escape(c, upper=False) for c in secret)
    every_upper = "".join(_u_escape(c, upper=True) for c in secret)
    rng = random.Random(secret)
    mixed = "".join(
        rng.choice(
            [json.dumps(c, ensure_ascii=False)[1:-1], _u_escape(c, upper=rng.random() < 0.5)]
        )
        for c in secret
    )
    return [
        plain,
        ascii_only,
        plain.replace("/", "\\/"),
        ascii_only.replace("/", "\\/"),
        every_lower,
        every_upper,
        mixed,
    ]


def _u_escape(c: str, *, upper: bool) -> str:
    units = c.encode("utf-16-be")
    out = "".join(
        f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2)
    )
    return out.upper().replace("\\U", "\\u") if upper else out


def _percent(secret: str) -> list[str]:
    upper = urllib.parse.quote(secret, safe="")
    lower = re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), upper)
    every = "".join(f"%{b:02X}" for b in secret.encode())
    return [upper, lower, urllib.parse.quote_plus(secret), every, every.lower()]


def _base64_cores(secret: str) -> list[str]:
    """The part of base64(prefix + secret) that depends on the secret alone, for each
    alignment and both alphabets (the same rule as the sidecar's redactor)."""
    out = []
    raw = secret.encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            encoded = encode(b"\0" * offset + raw).decode().rstrip("=")
            skip = [0, 2, 3][offset]
            tail = 1 if (offset + len(raw)) % 3 else 0
            core = encoded[skip : len(encoded) - tail]
            if len(core) >= MIN_BASE64_RUN:
                out.append(core)
    return out


def forms(secret: str) -> list[str]:
    """Every form of ``secret`` searched for in what leaves the sidecar."""
    pointer = secret.replace("~", "~0").replace("/", "~1")
    found = [secret, pointer, *_json_escapes(secret), *_percent(secret), *_base64_cores(secret)]
    return sorted(set(found), key=len, reverse=True)


def leaks(secret: str, text: str) -> list[str]:
    """The forms of ``secret`` (and raw windows of it) that occur in ``text``."""
    hits = [f for f in forms(secret) if f in text]
    windows = set()
    for written in (secret, json.dumps(secret, ensure_ascii=False)[1:-1]):
        windows |= {written[i : i + WINDOW] for i in range(max(1, len(written) - WINDOW + 1))}
    hits += [f"window {w!r}" for w in sorted(windows) if w in text]
    return hits


def echoes(secret: str) -> dict[str, str]:
    """A JSON object (as text fragments: ``{name: json-string-body}``) echoing ``secret``
    in every form :func:`forms` knows, the base64 ones as a Basic credential."""
    out: dict[str, str] = {}
    for i, escaped in enumerate(_json_escapes(secret)):
        out[f"json{i}"] = escaped
        out[f"bearer{i}"] = "Bearer " + escaped
    for i, pct in enumerate(_percent(secret)):
        out[f"url{i}"] = f"https://api.example/v1?key={pct}&x=1"
    for user in ("u", "us", "usr"):
        for name, encode in (("std", base64.b64encode), ("url", base64.urlsafe_b64encode)):
            credential = encode(f"{user}:{secret}".encode()).decode()
            out[f"basic_{name}_{user}"] = f"Basic {credential}"
    out["bare_b64"] = base64.b64encode(secret.encode()).decode()
    return out


def echo_body(*secrets: str) -> bytes:
    """A JSON document echoing every secret in every form, with each secret also as a key."""
    parts = []
    for n, secret in enumerate(secrets):
        for name, text in echoes(secret).items():
            parts.append(f'"s{n}_{name}": "{text}"')
        parts.append(f"{json.dumps(secret, ensure_ascii=False)}: {n}")
    return ("{" + ", ".join(parts) + "}").encode()


def message_strings(message: Message) -> list[str]:
    """Every string (and bytes field, decoded) anywhere in a protobuf message."""
    out: list[str] = []
    for descriptor, value in message.ListFields():
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            values = [f"{k}={v}" for k, v in value.items()]
        elif isinstance(value, (str, bytes, Message, int, float)):
            values = [value]
        else:  # a repeated field
            values = list(value)
        for v in values:
            if isinstance(v, Message):
                out.extend(message_strings(v))
            elif isinstance(v, bytes):
                out.append(v.decode("utf-8", "replace"))
            elif isinstance(v, str):
                out.append(v)
    return out


@dataclass
class Channels:
    """What left one sidecar, by channel."""

    results: list[str] = field(default_factory=list)
    list_tools: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    spans: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    other: dict[str, list[str]] = field(default_factory=dict)

    def add_result(self, message: Message) -> None:
        self.results.extend(message_strings(message))

    def add_list_tools(self, message: Message) -> None:
        self.list_tools.extend(message_strings(message))

    def add_spans(self, spans: list[Any]) -> None:
        for span in spans:
            self.spans.extend(message_strings(span))

    def scrape_metrics(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            self.metrics.append(response.read().decode())

    def by_channel(self) -> dict[str, list[str]]:
        return {
            "results": self.results,
            "list_tools": self.list_tools,
            "logs": self.logs,
            "spans": self.spans,
            "metrics": self.metrics,
            **self.other,
        }

    def found(self, *secrets: str) -> dict[str, list[str]]:
        """``{channel: [form found, ...]}`` for every channel where a secret shows."""
        out: dict[str, list[str]] = {}
        for channel, texts in self.by_channel().items():
            text = "\n".join(texts)
            hits = [f"{hit}" for secret in secrets for hit in leaks(secret, text)]
            if hits:
                out[channel] = hits
        return out

    def assert_clean(self, *secrets: str) -> None:
        for channel in ("results", "list_tools", "logs", "metrics"):
            assert self.by_channel()[channel], f"channel {channel} collected nothing"
        found = self.found(*secrets)
        assert not found, (
            f"secrets left the sidecar: {json.dumps(found, ensure_ascii=False, indent=1)}"
        )
