"""An answer written from tool results without a language model: sentences, not records.

The router planner answers with this when no local model is loaded (``--router-answers
template``, the default) and when the model fails. It knows no tool by name; it reads the
shapes results commonly have:

* an ``expression`` with its ``value``: ``17 * 23 = 391.``;
* a conversion (``value``, ``from``, ``result``, ``unit``): ``42.195 km is 26.2188 mi.``;
* a time (an ISO ``iso`` timestamp): ``In JST (Japan Standard Time) it is 14:15 on
  Wednesday, 2026-12-02 (UTC+09:00).``;
* a list of titled items (search hits): ``Top results for "token bucket": "Rate
  limiting with token buckets" (...), ...``;
* anything else: who or what it is about (the call's string arguments, or the result's
  name-like fields) and its main facts in words, units folded in: ``Cairo, Egypt:
  temperature 27 °C, humidity 30, wind speed 16 km/h, sunny.``

When several calls of one tool answer a comparison ("warmer", "colder", "windier", ...),
the sentence that answers it comes first: ``Cairo is warmer than Reykjavík (temperature
27 °C against 3 °C).`` A failed call says so, with the tool's own error message.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import orjson

from .base import Observation

__all__ = ["describe_observations", "error_text"]

#: Comparative words: (what the compared field's name contains, whether more wins).
COMPARISONS: tuple[tuple[str, str, bool], ...] = (
    ("warmer", "temp", True),
    ("hotter", "temp", True),
    ("colder", "temp", False),
    ("cooler", "temp", False),
    ("windier", "wind", True),
    ("calmer", "wind", False),
    ("more humid", "humid", True),
    ("drier", "humid", False),
    ("rain", "precip", True),
    ("higher", "", True),
    ("bigger", "", True),
    ("larger", "", True),
    ("more", "", True),
    ("lower", "", False),
    ("smaller", "", False),
    ("less", "", False),
    ("fewer", "", False),
)

#: Fields that name what a result is about; shown as its subject, not as facts.
_NAME_FIELDS = ("city", "name", "country", "tz", "title")


def describe_observations(task: str, observations: Sequence[Observation], limit: int = 600) -> str:
    """One readable paragraph answering ``task`` from ``observations``."""
    sentences = []
    comparison = _comparison(task, observations)
    if comparison:
        sentences.append(comparison)
    for obs in observations:
        sentences.append(_describe(obs) if obs.ok else _failure(obs))
    text = " ".join(s for s in sentences if s) or "The tools returned nothing."
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


# ---------------------------------------------------------------- one result


def _describe(obs: Observation) -> str:
    value = obs.result
    args = obs.call.arguments or {}
    if not isinstance(value, dict):
        return f"{_subject(args, {}) or _words(obs.call.name)}: {_scalar(value)}."
    if "expression" in value and _is_number(value.get("value")):
        return f"{value['expression']} = {_scalar(value['value'])}."
    if {"value", "from", "result"} <= value.keys():
        unit = value.get("unit") or value.get("to") or ""
        return (
            f"{_scalar(value['value'])} {value['from']} is {_scalar(value['result'])} {unit}."
        ).replace(" .", ".")
    if isinstance(value.get("iso"), str) and (when := _parse_time(value["iso"])):
        zone = value.get("tz") or args.get("tz") or ""
        name = f" ({value['name']})" if value.get("name") and value["name"] != zone else ""
        offset = value.get("utc_offset") or when.strftime("%z")
        weekday = value.get("weekday") or when.strftime("%A")
        where = f"In {zone}{name} it" if zone else "It"
        return f"{where} is {when:%H:%M} on {weekday}, {when:%Y-%m-%d} (UTC{offset})."
    for key, items in value.items():
        titles = _titles(items)
        if titles:
            about = next((v for v in args.values() if isinstance(v, str)), "")
            head = f'Top {_words(key)} for "{about}"' if about else f"Top {_words(key)}"
            return f"{head}: " + "; ".join(titles) + "."
        if isinstance(items, list) and not items and key != "units":
            return f"No {_words(key)} for {_subject(args, value) or _words(obs.call.name)}."
    subject = _subject(args, value) or _words(obs.call.name)
    facts = _facts(value)
    return f"{subject}: {', '.join(facts)}." if facts else f"{subject}: no details."


def _failure(obs: Observation) -> str:
    args = obs.call.arguments or {}
    subject = _subject(args, {})
    what = f"{_words(obs.call.name)} for {subject}" if subject else _words(obs.call.name)
    return f"The {what} failed ({obs.status}): {error_text(obs.content).rstrip('.')}."


def _subject(args: dict[str, Any], value: dict[str, Any]) -> str:
    """What a result is about: its name-like fields, else the call's string arguments."""
    names = [str(value[k]) for k in _NAME_FIELDS if isinstance(value.get(k), str)]
    if names:
        return ", ".join(dict.fromkeys(names))
    strings = [v for v in args.values() if isinstance(v, str) and len(v) <= 60]
    return ", ".join(strings)


def _name(args: dict[str, Any], value: dict[str, Any]) -> str:
    """The shortest subject: the first name-like field, else the first string argument."""
    return next(
        (str(value[k]) for k in _NAME_FIELDS if isinstance(value.get(k), str)),
        next((v for v in args.values() if isinstance(v, str)), "?"),
    )


def _facts(value: dict[str, Any], max_facts: int = 8) -> list[str]:
    """The scalars of a result, one level of nesting, units folded in, names left out."""
    units = value.get("units") if isinstance(value.get("units"), dict) else {}
    facts: list[str] = []

    def add(key: str, item: Any) -> None:
        if isinstance(item, str):
            # A short free-text field ("conditions": "sunny") reads best bare.
            facts.append(item if len(item.split()) <= 3 else f"{_words(key)} {item}")
        elif _is_number(item) or isinstance(item, bool):
            unit = units.get(key) if isinstance(units, dict) else None
            facts.append(f"{_words(key)} {_scalar(item)}" + (f" {unit}" if unit else ""))

    for key, item in value.items():
        if key in _NAME_FIELDS or key == "units":
            continue
        if isinstance(item, dict):
            for sub_key, sub in item.items():
                add(sub_key, sub)
        elif isinstance(item, list):
            if item and isinstance(item[0], dict):
                first = ", ".join(
                    f"{_words(k)} {_scalar(v)}"
                    for k, v in item[0].items()
                    if _is_number(v) or isinstance(v, str)
                )
                facts.append(f"{_words(key)} ({len(item)}) starting with {first}")
        else:
            add(key, item)
    return facts[:max_facts]


def _titles(items: Any, n: int = 3) -> list[str]:
    if not isinstance(items, list) or not items:
        return []
    out = []
    for item in items[:n]:
        if not isinstance(item, dict):
            return []
        title = item.get("title") or item.get("name")
        if not isinstance(title, str):
            return []
        snippet = item.get("snippet") or item.get("summary") or item.get("description")
        if isinstance(snippet, str) and snippet.strip():
            short = " ".join(snippet.split())
            short = short if len(short) <= 120 else short[:117].rstrip() + "..."
            out.append(f'"{title}" ({short})')
        else:
            out.append(f'"{title}"')
    return out


# ---------------------------------------------------------------- comparisons


def _comparison(task: str, observations: Sequence[Observation]) -> str:
    """``A is warmer than B (temperature 27 °C against 3 °C).`` when the task compares
    the results of several calls of one tool, else ``""``."""
    results = [o for o in observations if o.ok and isinstance(o.result, dict)]
    if len(results) < 2 or len({o.call.name for o in results}) != 1:
        return ""
    folded = _fold(task)
    for word, hint, more_wins in COMPARISONS:
        if not re.search(rf"\b{re.escape(word)}", folded):
            continue
        rows = [(_name(o.call.arguments or {}, o.result), _numbers(o.result)) for o in results]
        shared = [k for k in rows[0][1] if all(k in r[1] for r in rows) and hint in k.lower()]
        if not shared:
            continue
        key = shared[0]
        ranked = sorted(rows, key=lambda r: r[1][key], reverse=more_wins)
        unit = _unit(results[0].result, key)
        best, rest = ranked[0], ranked[1:]
        values = " against ".join(f"{_scalar(r[1][key])}{unit}" for r in ranked)
        if word == "rain":
            return (
                f"{best[0]} has the highest {_words(key.rsplit('.', 1)[-1])} "
                f"({values}, {', '.join(r[0] for r in ranked)})."
            )
        others = " and ".join(r[0] for r in rest)
        return f"{best[0]} is {word} than {others} ({_words(key.rsplit('.', 1)[-1])} {values})."
    return ""


def _numbers(value: dict[str, Any]) -> dict[str, float]:
    """Numeric fields by path, the top level and one level down (``current.temperature``);
    for a list of records, the first one (``forecast.0.precip_chance``)."""
    out: dict[str, float] = {}
    for key, item in value.items():
        if _is_number(item):
            out[key] = float(item)
        elif isinstance(item, dict):
            out.update({f"{key}.{k}": float(v) for k, v in item.items() if _is_number(v)})
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            out.update({f"{key}.0.{k}": float(v) for k, v in item[0].items() if _is_number(v)})
    return out


def _unit(value: dict[str, Any], path: str) -> str:
    units = value.get("units")
    unit = units.get(path.rsplit(".", 1)[-1]) if isinstance(units, dict) else None
    return f" {unit}" if isinstance(unit, str) else ""


# ---------------------------------------------------------------- words


def _words(key: str) -> str:
    return key.replace("_", " ").replace("-", " ").strip()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        # Ten significant digits: exact enough to quote, short enough to read.
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.10g}"
    return str(value)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def _parse_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def error_text(content: str) -> str:
    """The tool's own error message from a failed call's content, when it has one."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200]
    if isinstance(body, dict):
        inner = body.get("body")
        if isinstance(inner, str):
            try:
                parsed = orjson.loads(inner)
                if isinstance(parsed, dict) and "error" in parsed:
                    return str(parsed["error"])[:200]
            except orjson.JSONDecodeError:
                pass
        return str(body.get("error", content))[:200]
    return content[:200]
