"""``LocalPlanner``: a causal LM from a local directory, every agent's prompt batched together.

The model (``--model-dir``: any transformers causal LM with its tokenizer, loaded with
``local_files_only``) runs on CUDA in bf16/fp16 when a GPU is visible, else on the CPU in
fp32. Planning requests from all runs go through one
:class:`~brain._batcher.DynamicBatcher` (the lifecycle is
:class:`~brain._hosting.HostedModel`'s) into batched ``generate`` calls: prompts are
left-padded (so every sequence continues right after its own prompt), decoding is greedy,
and generation stops at EOS, at a stop string, or after ``max_new_tokens``. Batches are
capped by prompt tokens as well as by count.

The prompt describes the tools and asks for exactly one JSON object per reply::

    {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}
    {"answer": "It is 21 °C in Oslo."}

Hermes-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (what
many instruction-tuned models emit with their tool chat templates) are accepted too.
Output that is neither raises :class:`~brain.PlannerOutputError`: the run fails
with a clear step error and the raw output in its event record, never a crash. Arguments
that do not parse become a tool message for the next step, as with the OpenAI planner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .._batcher import BatcherOptions
from .._exceptions import PlannerError, PlannerOutputError
from .._hosting import HostedModel, offline_hub, pick_device
from .._metrics import BatcherMetrics
from .base import DEFAULT_SYSTEM_PROMPT, PlanningState, Step, new_call_id, parse_arguments

__all__ = ["LocalOptions", "LocalPlanner", "build_prompt", "parse_output"]

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalOptions:
    max_new_tokens: int = 256
    #: Prompts are cut (from the left, keeping the latest turns) to this many tokens.
    max_prompt_tokens: int = 4096
    #: Generation also stops at any of these strings.
    stop: tuple[str, ...] = ("\n\n\n", "<|im_end|>", "</s>")
    #: "cuda", "cpu", ...; default: cuda when available.
    device: str | None = None
    batcher: BatcherOptions = field(
        default_factory=lambda: BatcherOptions(
            max_batch_size=16, max_wait_ms=10, max_batch_tokens=32_768
        )
    )


def _tools_text(state: PlanningState) -> str:
    lines = []
    for tool in state.tools:
        # json, not orjson: a schema may hold integers beyond 64 bits.
        schema = json.dumps(tool.parameters, separators=(",", ":"), ensure_ascii=False)
        lines.append(f"- {tool.name}: {' '.join(tool.description.split())}\n  arguments: {schema}")
    return "\n".join(lines) or "(none)"


def build_messages(state: PlanningState) -> list[dict[str, str]]:
    """The conversation as chat messages (plain strings, for any chat template)."""
    system = (
        f"{state.system_prompt or DEFAULT_SYSTEM_PROMPT}\n\n"
        f"Tools:\n{_tools_text(state)}\n\n"
        "Reply with exactly one JSON object and nothing else: either "
        '{"tool_calls": [{"name": "<tool>", "arguments": {...}}]} to call tools '
        f"(at most {state.max_tool_calls} at once), or "
        '{"answer": "<final answer>"} when you are done.'
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": state.task}]
    for turn in state.history:
        calls = [
            {
                "name": c.name,
                "arguments": c.arguments if c.arguments is not None else c.raw_arguments,
            }
            for c in turn.step.tool_calls
        ]
        messages.append(
            {"role": "assistant", "content": orjson.dumps({"tool_calls": calls}).decode()}
        )
        results = "\n".join(
            f"[{obs.call.name} #{i}] {obs.status}: {obs.content}"
            for i, obs in enumerate(turn.observations)
        )
        messages.append({"role": "user", "content": f"Tool results:\n{results}"})
    return messages


def build_prompt(state: PlanningState, tokenizer: Any = None) -> str:
    """The model's prompt: its chat template when it has one, else a plain transcript."""
    messages = build_messages(state)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        prompt: str = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return prompt
    parts = [f"### {m['role']}\n{m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\n### assistant\n"


_JSON = json.JSONDecoder()


def _first_json_object(text: str) -> Any:
    """The first JSON object in ``text`` (models often wrap it in prose or code fences).

    Tries to decode a JSON value at each ``{`` in turn (the first 20), and returns the
    first that decodes.
    """
    start = text.find("{")
    for _ in range(20):
        if start == -1:
            break
        try:
            value, _end = _JSON.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return value
    return None


def parse_output(text: str) -> Step:
    """A model's reply as a step; raises :class:`PlannerOutputError` when it is neither."""
    blocks = _TOOL_CALL_BLOCK.findall(text)
    if blocks:
        calls = []
        for block in blocks:
            name_match = re.search(r'"name"\s*:\s*"([^"]+)"', block)
            name = name_match.group(1) if name_match else ""
            try:
                value = orjson.loads(block)
            except orjson.JSONDecodeError:
                calls.append(parse_arguments(new_call_id("local"), name, block))
                continue
            if not isinstance(value, dict) or not isinstance(value.get("name"), str):
                raise PlannerOutputError("a <tool_call> block names no tool", text)
            calls.append(_call(value))
        return Step.calls(*calls)
    value = _first_json_object(text)
    if isinstance(value, dict):
        if isinstance(value.get("tool_calls"), list) and value["tool_calls"]:
            items = value["tool_calls"]
            if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in items):
                raise PlannerOutputError("a tool call in the reply names no tool", text)
            return Step.calls(*(_call(c) for c in items))
        if isinstance(value.get("name"), str) and "arguments" in value:
            return Step.calls(_call(value))
        for key in ("answer", "final", "final_answer"):
            if isinstance(value.get(key), str):
                return Step.answer(value[key])
    match = re.search(r"final answer\s*:\s*(.+)", text, re.IGNORECASE | re.DOTALL)
    if match and match.group(1).strip():
        return Step.answer(match.group(1).strip())
    raise PlannerOutputError(
        "the model's output is neither a tool call nor a final answer "
        f"(expected one JSON object; got {text[:120]!r})",
        text,
    )


def _call(value: dict[str, Any]) -> Any:
    arguments = value.get("arguments")
    if arguments is not None and not isinstance(arguments, str | dict):
        arguments = orjson.dumps(arguments).decode()
    return parse_arguments(new_call_id("local"), value["name"], arguments)


class LocalPlanner(HostedModel[str, str]):
    """Plans with a local causal LM; all runs share its batched ``generate``."""

    name = "local"
    kind = "local planner"
    log = logging.getLogger("brain.planner.local")

    def __init__(
        self,
        model_dir: Path,
        *,
        options: LocalOptions | None = None,
        metrics: BatcherMetrics | None = None,
    ) -> None:
        self.options = options or LocalOptions()
        super().__init__(
            model_dir,
            batcher=self.options.batcher,
            name="local_planner",
            # Warm-up batched, as real requests will be.
            warmup=("warm-up", "warm-up, batched"),
            # Cheap estimate (no tokenizing on the event loop): ~3 characters per token.
            size_of=lambda prompt: len(prompt) // 3 + 1,
            metrics=metrics,
        )
        self.model_dir: Path = model_dir
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def reserved_tools(self) -> frozenset[str]:
        return frozenset()

    def _load(self) -> None:
        offline_hub()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (self.model_dir / "config.json").exists():
            raise PlannerError(f"no model in {self.model_dir} (config.json is missing)")
        self.device = pick_device(self.options.device)
        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(self.model_dir), local_files_only=True, dtype=dtype
        )
        self._tokenizer = tokenizer
        self._model = model.to(self.device).eval()

    def _forward(self, prompts: list[str]) -> list[str]:
        """The batcher's model function: a batch of prompts through :meth:`_generate`."""
        return self._generate(prompts)

    def _generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy batched generation (runs on the batcher's thread)."""
        import torch

        o = self.options
        tok = self._tokenizer
        with torch.inference_mode():
            enc = tok(
                prompts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=o.max_prompt_tokens,
            ).to(self.device)
            output = self._model.generate(
                **enc,
                max_new_tokens=max_new_tokens or o.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                # Stop a sequence as soon as it ends in a stop string (the batch ends
                # when every sequence has stopped); the text is cut there below.
                stop_strings=list(o.stop),
                tokenizer=tok,
            )
        new_tokens = output[:, enc["input_ids"].shape[1] :]
        texts: list[str] = tok.batch_decode(new_tokens, skip_special_tokens=True)
        return [_cut_at_stop(t, o.stop) for t in texts]

    async def plan(self, state: PlanningState) -> Step:
        await self.start()  # the prompt needs the tokenizer (its chat template)
        prompt = build_prompt(state, self._tokenizer)
        try:
            text = await self.submit(prompt, timeout=max(0.01, state.time_left))
        except (TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:  # the model failed on this batch
            raise PlannerError(f"generation failed: {exc!r}") from exc
        return parse_output(text)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cut = len(text)
    for stop in stops:
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]
