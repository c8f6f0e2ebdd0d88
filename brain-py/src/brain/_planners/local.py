"""``LocalPlanner``: a local causal LM plans every run, through one batched engine.

The model is the bundled SmolLM2-135M-Instruct by default (``--gguf`` for another GGUF,
``--model-dir`` for any transformers causal LM directory; see ``brain._engine.weights``),
on CUDA in bf16/fp16 when a GPU is visible, else on the CPU in float32. All runs share
one :class:`~brain._engine.engine.Engine`: continuous batching, a KV cache row per
sequence, the shared system prompt's KV computed once (prefix cache).

Each reply is constrained by a grammar built from the tools the sidecar lists
(``brain._engine.grammar``), so it is always one JSON object, either tool calls to real
tools with arguments valid for their input schemas (several at once allowed), or::

    {"answer": "It is warmer in Cairo (27 °C) than in Reykjavík (3 °C)."}

The answer is written by the model from the observations. What the sidecar still
refuses (a city the upstream does not know, a value out of range) goes back to the model
as a tool result, and the next reply may correct the call. Two policies keep a small
model on track: on the first step of a run that has tools, only tool calls are allowed
(like ``tool_choice="required"``); after ``answer_after_ok_steps`` steps whose calls all
succeeded, only the answer is (so the model cannot call tools in a loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .._exceptions import PlannerError, PlannerOutputError
from .._metrics import LLMMetrics
from .base import (
    PlanningState,
    Step,
    ToolCallRequest,
    new_call_id,
    parse_arguments,
)

__all__ = ["LocalOptions", "LocalPlanner", "build_messages", "parse_reply"]

log = logging.getLogger("brain.planner.local")

_SYSTEM = (
    "You are an agent that answers the user's question with tools. Tools:\n{tools}\n\n"
    "Reply with one JSON object only. To call tools: "
    '{{"tool_calls": [{{"name": "<tool>", "arguments": {{...}}}}]}}; put several calls in '
    "the list when the question needs several facts (for example one weather call per "
    "city). When the tool results are in, reply "
    '{{"answer": "<one sentence that answers the question, with the values>"}}.'
    "{examples}"
)

#: Worked examples shown in the system prompt, each only when every tool it calls is
#: listed (tool name, question, arguments of each call). They cost nothing per request:
#: the system prompt's KV is computed once (prefix cache).
DEFAULT_EXAMPLES: tuple[tuple[str, tuple[tuple[str, dict[str, Any]], ...]], ...] = (
    (
        "Is it colder in Oslo or in Rome?",
        (("weather", {"city": "Oslo"}), ("weather", {"city": "Rome"})),
    ),
    ("What is 12 * (3 + 4)?", (("calculator", {"expression": "12 * (3 + 4)"}),)),
    ("How many km are 5 miles?", (("convert_units", {"value": 5, "from": "mi", "to": "km"}),)),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalOptions:
    #: Tokens generated per step at most.
    max_new_tokens: int = 128
    #: Calls in one reply at most (and never more than the run allows).
    max_calls_per_step: int = 4
    #: The answer's length at most, in characters.
    answer_max_chars: int = 240
    #: After this many steps whose calls all succeeded, only an answer is allowed.
    answer_after_ok_steps: int = 1
    #: Characters of one tool result shown to the model.
    observation_chars: int = 300
    #: Worked examples for the system prompt (see DEFAULT_EXAMPLES).
    examples: tuple[tuple[str, tuple[tuple[str, dict[str, Any]], ...]], ...] = DEFAULT_EXAMPLES
    #: "cuda", "cpu", ...; default: cuda when available.
    device: str | None = None
    #: Where converted GGUF models are kept (default: ~/.cache/tandem/models).
    cache_dir: Path | None = None
    engine: Any = field(default=None)  # EngineOptions; Any so that importing is cheap


def _tool_line(tool: Any) -> str:
    props = (tool.parameters or {}).get("properties") or {}
    args = []
    for name, prop in props.items():
        kind = prop.get("type", "any") if isinstance(prop, dict) else "any"
        if isinstance(prop, dict) and isinstance(prop.get("enum"), list):
            kind = "|".join(map(str, prop["enum"][:8]))
        args.append(f"{name}: {kind}")
    description = " ".join(tool.description.split())
    first = description.split(". ")[0].rstrip(".")
    return f"- {tool.name}({', '.join(args)}): {first}."


def _examples_text(state: PlanningState, examples: Any) -> str:
    names = {t.name for t in state.tools}
    lines = []
    for question, calls in examples:
        if all(name in names for name, _ in calls):
            reply = {"tool_calls": [{"name": n, "arguments": a} for n, a in calls]}
            lines.append(f"Question: {question}\nReply: {_json(reply)}")
    return "\n\nExamples:\n" + "\n".join(lines) if lines else ""


def _json(value: Any) -> str:
    """JSON spaced as the grammar spaces it (": " and ", ")."""
    import json

    return json.dumps(value, ensure_ascii=False)


def system_message(state: PlanningState, examples: Any = DEFAULT_EXAMPLES) -> str:
    tools = "\n".join(_tool_line(t) for t in state.tools) or "(none)"
    text = _SYSTEM.format(tools=tools, examples=_examples_text(state, examples))
    if state.system_prompt:
        text = f"{state.system_prompt}\n\n{text}"
    return text


def _observation_text(obs: Any, limit: int) -> str:
    from .answers import error_text
    from .router import summarize

    args = orjson.dumps(obs.call.arguments).decode() if obs.call.arguments is not None else "?"
    if obs.ok:
        body = summarize(obs.result, limit)
    else:
        body = f"error ({obs.status}): {error_text(obs.content)}"
    return f"{obs.call.name}({args}) -> {body}"


def build_messages(
    state: PlanningState, observation_chars: int = 300, examples: Any = DEFAULT_EXAMPLES
) -> list[dict[str, str]]:
    """The conversation as chat messages: system (tools), the task, then each step."""
    messages = [
        {"role": "system", "content": system_message(state, examples)},
        {"role": "user", "content": state.task},
    ]
    for turn in state.history:
        calls = [
            {"name": c.name, "arguments": c.arguments if c.arguments is not None else {}}
            for c in turn.step.tool_calls
        ]
        messages.append({"role": "assistant", "content": _json({"tool_calls": calls})})
        results = "\n".join(_observation_text(o, observation_chars) for o in turn.observations)
        messages.append({"role": "user", "content": f"Tool results:\n{results}"})
    if state.history:
        # Restating the question right before the reply helps a small model answer it
        # rather than echo a number from the results.
        messages[-1]["content"] += (
            f"\n\nUsing these results, answer the question in one sentence: {state.task}"
        )
    return messages


def parse_reply(text: str) -> Step:
    """A grammar-constrained reply as a step (it is always one of the two JSON shapes)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PlannerOutputError(f"the model's reply was cut off ({exc})", text) from exc
    if isinstance(value, dict) and isinstance(value.get("answer"), str):
        return Step.answer(value["answer"])
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        calls: list[ToolCallRequest] = []
        for item in value["tool_calls"]:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                calls.append(
                    parse_arguments(new_call_id("local"), item["name"], item.get("arguments"))
                )
        if calls:
            return Step.calls(*calls)
    raise PlannerOutputError("the reply is neither tool calls nor an answer", text)


class LocalPlanner:
    """Plans with a local causal LM; every run shares its engine's batches."""

    name = "local"

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        gguf: Path | None = None,
        options: LocalOptions | None = None,
        metrics: LLMMetrics | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.gguf = gguf
        self.options = options or LocalOptions()
        self.metrics = metrics
        self.engine: Any = None
        self.device = "cpu"
        self._tokenizer: Any = None
        self._prefix_lens: dict[str, int] = {}
        self._starting: asyncio.Future[None] | None = None
        self._ready = False
        #: Every step's outcome, for the demo's summary (bounded: counters only).
        self.steps = 0

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def reserved_tools(self) -> frozenset[str]:
        return frozenset()

    async def start(self) -> None:
        """Load (converting a GGUF once), start the engine, warm up. Idempotent."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        from .._engine.engine import Engine, EngineOptions, GenerationRequest

        started = time.perf_counter()
        loaded = await asyncio.to_thread(self._load)
        self.device = loaded.device
        self._tokenizer = loaded.tokenizer
        self.engine = Engine(
            loaded, options=self.options.engine or EngineOptions(), metrics=self.metrics
        )
        self.engine.start()
        ids = self._tokenizer("warm-up")["input_ids"]
        await self.engine.generate(GenerationRequest(prompt_ids=ids, max_new_tokens=2))
        self._ready = True
        log.info(
            "local planner ready model=%s device=%s seconds=%.2f",
            loaded.path,
            loaded.device,
            time.perf_counter() - started,
        )

    def _load(self) -> Any:
        from .._engine.weights import load_model, prepare_model_dir

        path = prepare_model_dir(
            model_dir=self.model_dir, gguf=self.gguf, cache_dir=self.options.cache_dir
        )
        return load_model(path, device=self.options.device)

    async def aclose(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self.engine is not None:
            await self.engine.aclose()
        self._ready = False

    def prompt_ids(self, state: PlanningState) -> tuple[list[int], int]:
        """The prompt's token ids and how many of them are the shared system prefix."""
        messages = build_messages(state, self.options.observation_chars, self.options.examples)
        ids = self._render(messages, generation_prompt=True)
        system = messages[0]["content"]
        prefix = self._prefix_lens.get(system)
        if prefix is None:
            head = self._render(messages[:1], generation_prompt=False)
            prefix = len(head) if ids[: len(head)] == head else 0
            if len(self._prefix_lens) > 64:
                self._prefix_lens.clear()
            self._prefix_lens[system] = prefix
        return ids, prefix

    def _render(self, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
        """Token ids of ``messages``: the model's chat template, else a plain transcript."""
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            ids: list[int] = tok.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
            )
            return ids
        text = "".join(f"### {m['role']}\n{m['content']}\n\n" for m in messages)
        if generation_prompt:
            text += "### assistant\n"
        return list(tok(text)["input_ids"])

    def grammar(self, state: PlanningState, *, answer_only: bool = False) -> str:
        from .._engine.grammar import tool_call_grammar

        if answer_only:
            return tool_call_grammar(
                state.tools,
                answer=True,
                calls=False,
                answer_max_chars=self.options.answer_max_chars,
            )
        ok_steps = sum(
            1 for t in state.history if t.observations and all(o.ok for o in t.observations)
        )
        answer = not state.tools or bool(state.history)
        calls = bool(state.tools) and ok_steps < self.options.answer_after_ok_steps
        return tool_call_grammar(
            state.tools,
            max_calls=max(1, min(state.max_tool_calls, self.options.max_calls_per_step)),
            answer=answer or not calls,
            calls=calls,
            answer_max_chars=self.options.answer_max_chars,
        )

    async def plan(self, state: PlanningState) -> Step:
        return parse_reply(await self._generate(state, self.grammar(state)))

    async def write_answer(self, state: PlanningState) -> str:
        """The final answer to ``state.task`` from its history's results, written by the
        model and constrained to an answer (no tool calls): for planners that choose tools
        without a model (the router) but want the answer in words."""
        # The grammar closes the answer at answer_max_chars, so a budget of a token per
        # character (and the reply's braces) lets a rambling model reach that close
        # instead of being cut off mid-string.
        budget = max(self.options.max_new_tokens, self.options.answer_max_chars + 16)
        grammar = self.grammar(state, answer_only=True)
        step = parse_reply(await self._generate(state, grammar, max_new_tokens=budget))
        if step.final is None:
            raise PlannerOutputError("the model did not answer", "")
        return step.final

    async def _generate(
        self, state: PlanningState, grammar: str, *, max_new_tokens: int | None = None
    ) -> str:
        from .._engine.engine import GenerationRequest

        await self.start()
        ids, prefix = self.prompt_ids(state)
        request = GenerationRequest(
            prompt_ids=ids,
            max_new_tokens=max_new_tokens or self.options.max_new_tokens,
            grammar=grammar,
            prefix_len=prefix,
            deadline=time.monotonic() + max(0.01, state.time_left),
        )
        try:
            result = await self.engine.generate(request)
        except (TimeoutError, asyncio.CancelledError, PlannerError):
            raise
        except Exception as exc:
            raise PlannerError(f"generation failed: {exc!r}") from exc
        self.steps += 1
        text: str = result.text
        return text
