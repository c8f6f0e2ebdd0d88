"""Steps as JSON objects: for chat models that have no native tool calling.

Many local models (SmolLM2, most base models, anything behind a chat template without a
``tools`` section) cannot take the OpenAI ``tools`` parameter, and servers then either
ignore the tools or reject the request. Such a model is shown the tools in its system
prompt and replies with one JSON object, whose shape :func:`step_schema` describes::

    {"tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}, ...]}
    {"answer": "It is 21 °C in Paris."}

Servers that constrain decoding to a JSON schema (llama.cpp, vLLM, SGLang, OpenAI's
``response_format: json_schema``) then make every reply valid: each call names a real
tool with arguments that match its input schema, or the reply is an answer. The tool
results go back as a user message (any chat template takes one; a ``tool`` role is not
universal).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

from .._exceptions import PlannerOutputError
from .._types import ToolInfo
from .base import PlanningState, Step, Turn, new_call_id, parse_arguments

__all__ = ["json_step_messages", "parse_json_step", "step_schema"]

#: The reply format, spelled out for the model (the schema enforces it where the server can).
_REPLY_RULES = (
    "Reply with exactly one JSON object and nothing else: either "
    '{{"tool_calls": [{{"name": "<tool>", "arguments": {{...}}}}]}} to call tools '
    "(at most {max_calls} at once; independent calls go in the same reply), or "
    '{{"answer": "<final answer>"}} when the tool results answer the task. '
    "The answer is a full sentence that states the values the task asks for."
)


def step_schema(
    tools: Sequence[ToolInfo],
    max_calls: int,
    *,
    calls: bool = True,
    answer: bool = True,
    answer_max_chars: int | None = None,
) -> dict[str, Any]:
    """The JSON Schema of one reply: tool calls (each a real tool with valid arguments),
    an answer, or either. ``calls``/``answer`` switch the branches (not both off);
    ``answer_max_chars`` bounds the answer so that a reply ends within ``max_tokens``."""
    if not (calls or answer):
        raise ValueError("a step schema needs the tool-call branch, the answer branch, or both")
    branches: list[dict[str, Any]] = []
    if calls and tools:
        one_call = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "arguments": t.parameters or {"type": "object"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
        branches.append(
            {
                "type": "object",
                "properties": {
                    "tool_calls": {
                        "type": "array",
                        "items": one_call[0] if len(one_call) == 1 else {"anyOf": one_call},
                        "minItems": 1,
                        "maxItems": max(1, max_calls),
                    }
                },
                "required": ["tool_calls"],
                "additionalProperties": False,
            }
        )
    if answer or not branches:
        branches.append(
            {
                "type": "object",
                "properties": {
                    "answer": {
                        "type": "string",
                        "minLength": 1,
                        **({"maxLength": answer_max_chars} if answer_max_chars else {}),
                    }
                },
                "required": ["answer"],
                "additionalProperties": False,
            }
        )
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def _tools_text(tools: Sequence[ToolInfo]) -> str:
    lines = []
    for tool in tools:
        # The stdlib encoder: orjson refuses integers beyond 64 bits, which schemas may hold.
        schema = json.dumps(tool.parameters, separators=(",", ":"), ensure_ascii=False)
        lines.append(f"- {tool.name}: {' '.join(tool.description.split())}\n  arguments: {schema}")
    return "\n".join(lines) or "(none)"


def _results_text(task: str, turn: Turn) -> str:
    """The tool results, then the task again: small models lose it in a long prompt."""
    lines = ["Results of the tool calls:"]
    for obs in turn.observations:
        args = obs.call.raw_arguments or "{}"
        verb = "returned" if obs.ok else f"failed ({obs.status}):"
        lines.append(f"- {obs.call.name}({args}) {verb} {obs.content}")
    lines.append(f"The task: {task}")
    return "\n".join(lines)


def _step_json(turn: Turn) -> str:
    """The model's own earlier reply, re-serialised (arguments as it sent them)."""
    calls = [
        {
            "name": c.name,
            "arguments": c.arguments if c.arguments is not None else c.raw_arguments,
        }
        for c in turn.step.tool_calls
    ]
    return orjson.dumps({"tool_calls": calls}).decode()


def json_step_messages(
    state: PlanningState, system_prompt: str, tools: Sequence[ToolInfo]
) -> list[dict[str, str]]:
    """The conversation for a JSON-step model: plain system/user/assistant strings."""
    system = f"{system_prompt}\n\nTools:\n{_tools_text(tools)}\n\n" + _REPLY_RULES.format(
        max_calls=state.max_tool_calls
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": state.task}]
    for turn in state.history:
        messages.append({"role": "assistant", "content": _step_json(turn)})
        messages.append({"role": "user", "content": _results_text(state.task, turn)})
    return messages


def parse_json_step(text: str) -> Step:
    """A reply in the :func:`step_schema` shape as a step.

    Raises :class:`PlannerOutputError` when the reply is not such an object: a server that
    ignored the schema, or a reply cut by ``max_tokens``. Arguments that are not an object
    become malformed calls that the agent explains back to the model.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PlannerOutputError(
            f"the model's reply is not JSON ({exc}); did the server apply response_format?",
            text[:2000],
        ) from exc
    if not isinstance(value, dict):
        raise PlannerOutputError("the model's reply is not a JSON object", text[:2000])
    raw_calls = value.get("tool_calls")
    if isinstance(raw_calls, list) and raw_calls:
        calls = []
        for raw in raw_calls:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise PlannerOutputError("a tool call has no name", text[:2000])
            arguments = raw.get("arguments")
            if arguments is not None and not isinstance(arguments, str | dict):
                arguments = orjson.dumps(arguments).decode()
            calls.append(parse_arguments(new_call_id(), raw["name"], arguments))
        return Step.calls(*calls)
    answer = value.get("answer")
    if isinstance(answer, str) and answer.strip():
        return Step.answer(answer.strip())
    raise PlannerOutputError(
        'the model replied with neither "tool_calls" nor an "answer"', text[:2000]
    )
