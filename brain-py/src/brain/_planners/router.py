"""``RouterPlanner``: no LLM; a sentence-embedding model picks the tool, the schema fills it.

Step 1: the task and every tool are embedded (the tool as several short texts: its name,
each sentence of its description, each argument's description) with the bundled
all-MiniLM-L6-v2 model through the shared :class:`~brain._batcher.DynamicBatcher`; the tool
whose best text is most similar to the task wins. Its arguments are filled from the task
text, guided by the tool's JSON Schema:

* an ``enum`` argument takes a value the task mentions, by name or by a common alias
  ("Fahrenheit" → ``f``, "kilometres" → ``km``); when two arguments share an enum (``from``
  and ``to``), the value right after a number is the source and the other the target;
* a number argument takes the numbers in the task, in order;
* a string argument whose description lists the values it knows (e.g. the cities of the
  weather tool) takes each one the task mentions: several mentions become several tool
  calls run in parallel;
* an arithmetic-expression argument takes the expression in the task, with words such as
  "times", "plus" or "square root of" turned into operators;
* a query or keywords argument takes the task without its filler words; any other
  required string takes the whole task.

Step 2: the answer. With a local causal LM loaded (``--router-answers local``: the
bundled SmolLM2-135M-Instruct, or ``--gguf``/``--model-dir``), the model writes it from
the observations, constrained to one answer (:meth:`LocalPlanner.write_answer`), in the
engine every run shares. Without one (the default), or when the model fails, the answer
is built from the results without a model
(:func:`~brain._planners.answers.describe_observations`): sentences with their main facts,
the comparison the task asks for first, or the error a tool reported.

What it cannot do, compared with an LLM planner: chain tools (use one tool's output as
another's input), pick more than one kind of tool per task, reason about results beyond
comparing one field, or fix arguments after INVALID_ARGUMENTS beyond what the text says.
It is fast, deterministic, needs no server and no API key, and shows the whole path
(batched local inference, the agent loop, the sidecar) working end to end.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .._embedding import SentenceEmbedder
from .._exceptions import PlannerError
from .._types import ToolInfo
from .answers import describe_observations
from .base import Observation, PlanningState, Step, ToolCallRequest, new_call_id

if TYPE_CHECKING:
    from .local import LocalPlanner

__all__ = ["RouterOptions", "RouterPlanner"]

log = logging.getLogger("brain.planner.router")

#: Common names of enum values (units), matched as whole words, case-insensitively.
ALIASES: dict[str, tuple[str, ...]] = {
    "c": ("celsius", "centigrade", "°c", "degrees c"),
    "f": ("fahrenheit", "°f", "degrees f"),
    "k": ("kelvin", "kelvins"),
    "m": ("metre", "metres", "meter", "meters"),
    "km": ("kilometre", "kilometres", "kilometer", "kilometers", "kms"),
    "cm": ("centimetre", "centimetres", "centimeter", "centimeters"),
    "mm": ("millimetre", "millimetres", "millimeter", "millimeters"),
    "mi": ("mile", "miles"),
    "yd": ("yard", "yards"),
    "ft": ("foot", "feet"),
    "in": ("inch", "inches"),
    "kg": ("kilogram", "kilograms", "kilo", "kilos", "kgs"),
    "g": ("gram", "grams"),
    "lb": ("pound", "pounds", "lbs"),
    "oz": ("ounce", "ounces"),
    "l": ("litre", "litres", "liter", "liters"),
    "ml": ("millilitre", "millilitres", "milliliter", "milliliters"),
    "gal": ("gallon", "gallons"),
    "cup": ("cups",),
    "kph": ("km/h", "kmh", "kilometres per hour", "kilometers per hour"),
    "mph": ("miles per hour",),
    "mps": ("m/s", "metres per second", "meters per second"),
}

#: Enum values too short or too common to be matched by their bare name.
_BARE_BLOCKLIST = {"in", "m", "g", "l", "c", "f", "k", "cup", "mi"}

_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "to",
        "in",
        "on",
        "for",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "what",
        "whats",
        "what's",
        "which",
        "who",
        "how",
        "me",
        "my",
        "i",
        "you",
        "your",
        "please",
        "tell",
        "find",
        "search",
        "look",
        "up",
        "about",
        "give",
        "show",
        "some",
        "any",
        "do",
        "does",
        "can",
        "could",
        "would",
        "should",
        "at",
        "by",
        "with",
        "from",
        "that",
        "this",
        "these",
        "those",
        "it",
        "its",
        "into",
        "than",
        "then",
        "there",
        "much",
        "many",
        "most",
        "more",
        "articles",
        "article",
        "anything",
        "something",
        "know",
    }
)

_MATH_WORDS = [
    (r"\bsquare root of\b", "sqrt"),
    (r"\bmultiplied by\b", "*"),
    (r"\bdivided by\b", "/"),
    (r"\bto the power of\b", "**"),
    (r"\btimes\b", "*"),
    (r"\bplus\b", "+"),
    (r"\bminus\b", "-"),
    (r"\bsquared\b", "** 2"),
    (r"\bcubed\b", "** 3"),
    (r"\bmod(?:ulo)?\b", "%"),
    ("\u00d7", "*"),
    ("\u00f7", "/"),
    (r"\^", "**"),
]
_MATH_FUNCS = "sqrt|sin|cos|tan|asin|acos|atan|log10|log2|log|exp|abs|round|min|max|pi|tau|e"
_EXPR = re.compile(
    rf"(?:[-+(]\s*)*(?:\d[\d._]*(?:e[-+]?\d+)?|(?<![\w.])(?:{_MATH_FUNCS})\b)"
    rf"(?:[\s\d.()+\-*/%,]|(?<![\w.])(?:{_MATH_FUNCS})\b)*",
    re.IGNORECASE,
)
_NUMBER = re.compile(
    r"(?<![\w.])-?\d+(?:[.,]\d+)?(?:e[-+]?\d+)?(?![\w])|(?<![\w.])-?\d+(?=[a-zA-Z])"
)


#: How much filling a tool's arguments from the task counts next to similarity.
FILL_WEIGHT = 0.25


@dataclass(frozen=True, kw_only=True, slots=True)
class RouterOptions:
    #: Below this similarity no tool is chosen; the run answers that none fits.
    min_similarity: float = 0.2


def fold(text: str) -> str:
    """Lower-case without accents: "São Paulo" → "sao paulo"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def tool_texts(tool: ToolInfo) -> list[str]:
    """The short texts a tool is recognised by."""
    texts = [tool.name.replace("_", " ").replace("-", " ")]
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(tool.description.split()))
    texts += [s for s in sentences if len(s) > 12 and ":" not in s[:-1]]
    texts += [s.split(":")[0] for s in sentences if ":" in s[:-1]]
    for name, prop in tool.parameters.get("properties", {}).items():
        if isinstance(prop, dict) and isinstance(prop.get("description"), str):
            texts.append(f"{name}: {prop['description']}")
    return [t for t in dict.fromkeys(texts) if t.strip()]


def known_values(description: str) -> list[str]:
    """The longest comma-separated list of capitalised names in a description."""
    best: list[str] = []
    flat = " ".join(description.split())
    for chunk in re.split(r"[:;.]\s", flat):
        names = [n.strip().removeprefix("and ").strip() for n in chunk.split(",")]
        names = [n for n in names if n and n[0].isupper() and len(n.split()) <= 3]
        if len(names) > len(best) and len(names) >= 3:
            best = names
    return best


def _mentions(text: str, phrase: str) -> list[int]:
    """Positions where ``phrase`` occurs in ``text`` as whole words (both folded)."""
    pattern = r"(?<![\w/°])" + re.escape(phrase) + r"(?![\w/])"
    return [m.start() for m in re.finditer(pattern, text)]


class RouterPlanner:
    """Embedding-similarity tool choice plus schema-guided argument filling."""

    name = "router"

    def __init__(
        self,
        embedder: SentenceEmbedder,
        *,
        options: RouterOptions | None = None,
        answer_model: LocalPlanner | None = None,
    ) -> None:
        self.embedder = embedder
        self.options = options or RouterOptions()
        #: Writes the final answer when set (a local causal LM); else no model does.
        self.answer_model = answer_model
        #: Answers the model could not write (it failed), written without it instead.
        self.answer_fallbacks = 0

    @property
    def ready(self) -> bool:
        return self.embedder.ready and (self.answer_model is None or self.answer_model.ready)

    @property
    def reserved_tools(self) -> frozenset[str]:
        return frozenset()

    async def start(self) -> None:
        # One after the other: the embedder imports transformers in a worker thread, and
        # the answer model's grammar (llguidance.hf) reads transformers' attributes while
        # that import is still running ("module 'transformers' has no attribute
        # 'PreTrainedTokenizerFast'"), since transformers' lazy module is not thread-safe.
        await self.embedder.start()
        if self.answer_model is not None:
            await self.answer_model.start()

    async def aclose(self) -> None:
        try:
            await self.embedder.aclose()
        finally:
            if self.answer_model is not None:
                await self.answer_model.aclose()

    # ---------------------------------------------------------------- planning

    async def plan(self, state: PlanningState) -> Step:
        if state.history:
            return await self.final_answer(state)
        if not state.tools:
            return Step.answer("No tools are available to this run, so I cannot act on the task.")
        ranked = await self.rank(state.task, state.tools, timeout=max(0.01, state.time_left))
        tool, score = ranked[0]
        if score < self.options.min_similarity:
            return Step.answer(
                f"No tool fits this task (best match {tool.name!r}, similarity {score:.2f})."
            )
        calls = [
            ToolCallRequest(new_call_id("router"), tool.name, args, orjson.dumps(args).decode())
            for args in self.fill_arguments(state.task, tool)[: state.max_tool_calls]
        ]
        return Step.calls(*calls, text=f"chose {tool.name} (similarity {score:.2f})")

    async def rank(
        self, task: str, tools: Sequence[ToolInfo], *, timeout: float | None = None
    ) -> list[tuple[ToolInfo, float]]:
        """Tools by similarity to ``task``, best first."""
        texts = [tool_texts(t) for t in tools]
        try:
            vectors = await self.embedder.embed_many(
                [task, *(x for group in texts for x in group)], timeout=timeout
            )
        except (TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise PlannerError(f"embedding failed: {exc!r}") from exc
        query, rest = vectors[0], vectors[1:]
        scores: list[tuple[ToolInfo, float]] = []
        offset = 0
        for tool, group in zip(tools, texts, strict=True):
            sims = sorted(
                (float(query @ v) for v in rest[offset : offset + len(group)]), reverse=True
            )
            offset += len(group)
            # The best text decides, the runner-up breaks near-ties, and a tool whose
            # arguments the task can fill beats one it cannot.
            similarity = sims[0] + 0.25 * (sims[1] if len(sims) > 1 else 0.0)
            scores.append((tool, similarity + FILL_WEIGHT * self._fill(task, tool)[1]))
        scores.sort(key=lambda pair: pair[1], reverse=True)
        return scores

    # ---------------------------------------------------------------- arguments

    def fill_arguments(self, task: str, tool: ToolInfo) -> list[dict[str, Any]]:
        """One argument object per tool call to make (several for several entities)."""
        return self._fill(task, tool)[0]

    def _fill(self, task: str, tool: ToolInfo) -> tuple[list[dict[str, Any]], float]:
        """The argument objects, and how much of the schema the task could fill (0..1).

        The fill ratio counts the required arguments (all arguments when none is
        required); one filled from the task text as a whole counts half, since any text
        fills it.
        """
        schema = tool.parameters
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        folded = fold(task)
        args: dict[str, Any] = {}
        weak: set[str] = set()
        fan_out: tuple[str, list[str]] | None = None

        enum_groups: dict[tuple[str, ...], list[str]] = {}
        for name, prop in props.items():
            if isinstance(prop, dict) and isinstance(prop.get("enum"), list):
                enum_groups.setdefault(tuple(map(str, prop["enum"])), []).append(name)
        for values, names in enum_groups.items():
            found = self._enum_mentions(task, folded, values)
            if len(names) == 1:
                if found:
                    args[names[0]] = found[0][1]
                continue
            for name, value in zip(names, self._order_pair(task, found), strict=False):
                args[name] = value

        numbers = [_to_number(m.group()) for m in _NUMBER.finditer(task)]
        for name, prop in props.items():
            if name in args or not isinstance(prop, dict) or "enum" in prop:
                continue
            kind = prop.get("type")
            description = str(prop.get("description", ""))
            if kind in ("number", "integer"):
                if name in required and numbers:
                    number = numbers.pop(0)
                    args[name] = int(number) if kind == "integer" else number
            elif kind == "string":
                if _is_expression(name, description):
                    expression = extract_expression(task)
                    if expression:
                        args[name] = expression
                    continue
                if _is_query(name, description):
                    args[name] = keywords(task) or task
                    weak.add(name)
                    continue
                listed = known_values(tool.description) or known_values(description)
                if listed:
                    hits = sorted(
                        {(min(pos), v) for v in listed if (pos := _mentions(folded, fold(v)))}
                    )
                    if hits:
                        fan_out = (name, [v for _, v in hits])
                        args[name] = hits[0][1]
                elif name in required:
                    args[name] = task.strip()
                    weak.add(name)
        counted = required or set(props)
        if counted:
            filled = sum(0.5 if n in weak else 1.0 for n in counted if n in args)
            ratio = filled / len(counted)
        else:
            ratio = 0.0
        if fan_out is None:
            return [args], ratio
        name, entities = fan_out
        return [{**args, name: entity} for entity in entities], ratio

    def _enum_mentions(
        self, task: str, folded: str, values: Sequence[str]
    ) -> list[tuple[int, str]]:
        """``(position, value)`` for each enum value the task mentions, by name or alias.

        Where mentions overlap ("metres per second" and "metres"), the longer one wins.
        """
        spans: list[tuple[int, int, str]] = []
        for value in values:
            names = list(ALIASES.get(value.lower(), ()))
            if value.lower() not in _BARE_BLOCKLIST:
                names.append(value.lower())
            for phrase in names:
                spans += [
                    (pos, pos + len(phrase), value) for pos in _mentions(folded, fold(phrase))
                ]
            # Upper-case codes (time zones: "JST", "CET") match case-sensitively.
            if value.isupper() and len(value) > 1:
                pattern = rf"(?<!\w){re.escape(value)}(?!\w)"
                spans += [(m.start(), m.end(), value) for m in re.finditer(pattern, task)]
        spans.sort(key=lambda span: (span[0], span[0] - span[1]))
        kept: dict[str, int] = {}
        end = -1
        for start, stop, value in spans:
            if start < end:
                continue  # inside a longer mention already kept
            end = stop
            kept.setdefault(value, start)
        return sorted((pos, value) for value, pos in kept.items())

    def _order_pair(self, task: str, found: list[tuple[int, str]]) -> list[str]:
        """For two arguments sharing an enum (from, to): the unit after a number first."""
        if len(found) < 2:
            return [v for _, v in found]
        after_number = [(pos, v) for pos, v in found if re.search(r"\d\s*$", fold(task)[:pos])]
        if after_number:
            source = after_number[0]
            rest = [pair for pair in found if pair != source]
            return [source[1], rest[0][1]]
        return [found[0][1], found[1][1]]

    # ---------------------------------------------------------------- answers

    async def final_answer(self, state: PlanningState) -> Step:
        """The answer to the task from the last step's observations: written by the local
        model when one is loaded, else (or when it fails) without a model."""
        observations = state.history[-1].observations
        if self.answer_model is not None:
            try:
                return Step.answer(await self.answer_model.write_answer(state))
            except (TimeoutError, asyncio.CancelledError):
                raise
            except PlannerError as exc:
                # The results are in; a model that cannot phrase them does not lose them.
                self.answer_fallbacks += 1
                log.warning("answer model failed, answering without it: %s", exc)
                return Step(
                    final=self.answer(state.task, observations),
                    text=f"answered without the model ({exc})",
                )
        return Step.answer(self.answer(state.task, observations))

    def answer(self, task: str, observations: Sequence[Observation]) -> str:
        """The answer without a model: sentences built from the results."""
        return describe_observations(task, observations) if observations else "Nothing was found."


def _is_expression(name: str, description: str) -> bool:
    return "expression" in name or "expression" in description.lower()


def _is_query(name: str, description: str) -> bool:
    text = f"{name} {description}".lower()
    return any(w in text for w in ("query", "keywords", "search"))


def extract_expression(task: str) -> str:
    """The arithmetic in ``task``, with operator words replaced: "3 times 4" → "3 * 4"."""
    text = task
    if re.match(r"\s*(?:add|sum(?: up)?(?: of)?)\b", text, re.IGNORECASE):
        text = re.sub(r"\b(?:and|to)\b", "+", text.split(None, 1)[-1])
    for pattern, replacement in _MATH_WORDS:
        text = re.sub(pattern, f" {replacement} ", text, flags=re.IGNORECASE)
    # "sqrt 2", "log10 of 1000" -> "sqrt(2)", "log10(1000)"
    text = re.sub(
        rf"\b({_MATH_FUNCS})\s+(?:of\s+)?(-?\d[\d.]*)", r"\1(\2)", text, flags=re.IGNORECASE
    )
    candidates = [m.group().strip(" ,.") for m in _EXPR.finditer(text)]
    # An expression has an operator or a function; a bare number is not arithmetic.
    candidates = [
        c
        for c in candidates
        if any(ch.isdigit() for ch in c) and (re.search(r"[-+*/%(]", c.lstrip("-+")))
    ]
    if not candidates:
        return ""
    best = max(candidates, key=len)
    best = " ".join(best.split())
    # Balance parentheses the sentence may have cut.
    while best.count("(") > best.count(")"):
        best += ")"
    while best.count(")") > best.count("(") and best.endswith(")"):
        best = best[:-1]
    return best


def keywords(task: str) -> str:
    words = re.findall(r"[\w'-]+", task)
    return " ".join(w for w in words if w.lower() not in _STOPWORDS)


def _to_number(text: str) -> float:
    value = float(text.replace(",", "."))
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def summarize(value: Any, limit: int = 300) -> str:
    """The main fields of a JSON result on one line.

    Scalars up to two levels down as ``path=value``; a ``units`` object naming the unit of
    other fields is folded into them (``current.temperature=27 °C``); lists show their
    first items by title or name.
    """
    parts: list[str] = []
    units: dict[str, str] = {}
    if isinstance(value, dict) and isinstance(value.get("units"), dict):
        units = {k: str(v) for k, v in value["units"].items() if isinstance(v, str | int)}

    def walk(v: Any, path: str, depth: int) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                if depth == 0 and k == "units" and units:
                    continue
                if depth < 2:
                    walk(sub, f"{path}.{k}" if path else str(k), depth + 1)
        elif isinstance(v, list):
            titles = [
                str(item.get("title") or item.get("name"))
                for item in v[:3]
                if isinstance(item, dict) and (item.get("title") or item.get("name"))
            ]
            if titles:
                parts.append(f"{path}: " + " | ".join(titles))
            elif v and not isinstance(v[0], dict | list):
                parts.append(f"{path}: " + ", ".join(map(str, v[:5])))
        else:
            unit = units.get(path.rsplit(".", 1)[-1])
            shown = f"{v} {unit}" if unit else str(v)
            parts.append(f"{path}={shown}" if path else shown)

    walk(value, "", 0)
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."
