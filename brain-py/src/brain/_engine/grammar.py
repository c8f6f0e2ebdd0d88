"""Constrained decoding: a grammar from the sidecar's tools, and the token masks it allows.

The planner's reply is one JSON object, either tool calls or the final answer::

    {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}, {"name": ...}]}
    {"answer": "It is 21 °C in Oslo."}

:func:`tool_call_grammar` turns the tools ``ListTools`` returned into a Lark grammar for
llguidance: one alternative per tool whose ``arguments`` is that tool's input JSON
Schema (``%json``), up to ``max_calls`` calls in one reply (parallel calls), and the
answer branch. Every reply the model can produce under it names a real tool with
arguments valid for its schema, or is an answer. A schema llguidance cannot compile
(a feature it does not support) is relaxed to "any object" for that tool alone, with a
warning: the sidecar still validates, and its verdict goes back to the model.

llguidance (Microsoft; what llama.cpp, vLLM and SGLang use) was chosen over xgrammar and
outlines: a small wheel with no dependencies, JSON Schema and Lark in one grammar, and
masks for a whole batch computed in parallel off the GIL
(:meth:`GrammarCompiler.allowed`).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import torch

from .._types import ToolInfo

__all__ = ["GrammarCompiler", "InvalidGrammar", "tool_call_grammar"]

log = logging.getLogger("brain.engine.grammar")

#: Fixed separators and no free whitespace: a small model cannot wander off into spaces.
_STRICT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


_CALLS_OPEN = '{"tool_calls": ['
_ANSWER_OPEN = '{"answer": '


class InvalidGrammar(ValueError):
    """llguidance refused the grammar."""


def _lark_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _json_rule(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _STRICT}, ensure_ascii=False)


def _schema_compiles(schema: dict[str, Any]) -> str | None:
    message: str = llguidance.LLMatcher.validate_grammar(f"start: {_json_rule(schema)}\n")
    return message or None


def tool_call_grammar(
    tools: Sequence[ToolInfo],
    *,
    max_calls: int = 4,
    answer: bool = True,
    calls: bool = True,
    answer_max_chars: int = 400,
) -> str:
    """The Lark grammar of one planner reply (see the module doc)."""
    if not (answer or (calls and tools)):
        raise ValueError("a grammar needs the answer branch or at least one tool")
    rules: list[str] = []
    branches: list[str] = []
    if calls and tools:
        names = []
        for i, tool in enumerate(tools):
            schema: dict[str, Any] = dict(tool.parameters or {"type": "object"})
            problem = _schema_compiles(schema)
            if problem is not None:
                log.warning(
                    "tool %s: its input schema cannot be compiled into the grammar (%s); "
                    "any JSON object is allowed for it, and the sidecar validates",
                    tool.name,
                    problem.splitlines()[0] if problem else "?",
                )
                schema = {"type": "object"}
            head = _lark_literal(f'{{"name": {json.dumps(tool.name)}, "arguments": ')
            rules.append(f'call_{i}: {head} args_{i} "}}"')
            rules.append(f"args_{i}: {_json_rule(schema)}")
            names.append(f"call_{i}")
        rules.append(f"call: {' | '.join(names)}")
        more = f' (", " call){{0,{max_calls - 1}}}' if max_calls > 1 else ""
        rules.append(f'calls: {_lark_literal(_CALLS_OPEN)} call{more} "]}}"')
        branches.append("calls")
    if answer:
        text = {"type": "string", "minLength": 1, "maxLength": answer_max_chars}
        rules.append(f'answer: {_lark_literal(_ANSWER_OPEN)} {_json_rule(text)} "}}"')
        branches.append("answer")
    return "\n".join([f"start: {' | '.join(branches)}", *rules]) + "\n"


class GrammarCompiler:
    """Matchers for grammars (compiled once, copied per sequence) and batched masks."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int], *, cache: int = 32
    ) -> None:
        eos = list(eos_token_ids) or None
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        self.vocab_size = vocab_size
        self._executor = llguidance.LLExecutor()
        self._compiled: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._cache = cache
        self._lock = threading.Lock()
        self._pin = torch.cuda.is_available()

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for ``grammar``; :class:`InvalidGrammar` if it does not compile."""
        with self._lock:
            template = self._compiled.get(grammar)
            if template is not None:
                self._compiled.move_to_end(grammar)
        if template is None:
            template = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
            if template.is_error():
                raise InvalidGrammar(f"the grammar does not compile: {template.get_error()}")
            with self._lock:
                self._compiled[grammar] = template
                while len(self._compiled) > self._cache:
                    self._compiled.popitem(last=False)
        return template.deep_copy()

    def allowed(self, matchers: list[tuple[Any, int]], batch: int, vocab: int) -> torch.Tensor:
        """Bitmask ``[batch, ceil(vocab / 32)]`` (int32, bit set = allowed); rows without a
        matcher allow everything. Computed for all rows in parallel."""
        words = (max(vocab, self.vocab_size) + 31) // 32
        mask = torch.full((batch, words), -1, dtype=torch.int32, pin_memory=self._pin)
        llguidance.torch.fill_next_token_bitmask_par(self._executor, matchers, mask)
        return mask
