"""``OpenAIPlanner``: any OpenAI-compatible chat-completions endpoint, reached through the sidecar.

The HTTP request to the model is itself a tool call: the sidecar's ``llm`` tool (the name
is configurable) POSTs the request body to ``<base>/v1/chat/completions``, adding the
``Authorization`` header from its own secrets. So model calls get the sidecar's rate
limits, deadlines and metrics, and the brain never holds an API key. A tools.yaml entry::

    - name: llm
      description: Chat completions (used by the brain's planner; not offered to agents).
      input_schema: {type: object, required: [messages]}
      request:
        method: POST
        url: http://vllm:8000/v1/chat/completions
        headers: {Authorization: "Bearer ${env:LLM_API_KEY}"}
      timeout: 60s

Each step sends the whole conversation: system prompt, task, then for every earlier step
the assistant message with its ``tool_calls`` and one ``role: tool`` message per call
(providers reject a conversation with an unanswered ``tool_call_id``). Tools are sent as
``tools`` with the sidecar's input schemas as function parameters; the ``llm`` tool
itself is never among them. Tool-call arguments are parsed defensively: JSON that does
not parse, or is not an object, becomes a tool message explaining the problem.

``tool_format="json_schema"`` is for models without native tool calling (the bundled
SmolLM2 behind llama.cpp's server, most small local models): the tools are described in
the system prompt and the reply is constrained by ``response_format`` to one JSON object,
tool calls or an answer, whose schema is built from the sidecar's input schemas
(:mod:`.json_steps`). A server that enforces the schema (llama.cpp, vLLM, SGLang, OpenAI)
makes every call name a real tool with schema-valid arguments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._agent import ToolCaller
from .._exceptions import PlannerError, PlannerOutputError, SidecarError
from .._types import Status, ToolInfo
from .base import (
    DEFAULT_SYSTEM_PROMPT,
    PlanningState,
    Step,
    ToolCallRequest,
    new_call_id,
    parse_arguments,
)
from .json_steps import json_step_messages, parse_json_step, step_schema

__all__ = ["TOOL_FORMATS", "OpenAIOptions", "OpenAIPlanner", "openai_messages", "openai_tools"]

#: ``tools``: the OpenAI ``tools`` parameter, the provider parses the calls.
#: ``json_schema``: tools in the prompt, the reply constrained to a JSON step object.
TOOL_FORMATS = ("tools", "json_schema")


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenAIOptions:
    #: Model name sent in the request (``model``).
    model: str = "default"
    #: The sidecar tool that forwards chat-completions requests.
    llm_tool: str = "llm"
    #: How tools are offered and calls come back; one of :data:`TOOL_FORMATS`.
    tool_format: str = "tools"
    #: ``tool_choice``: "auto", "required", "none" (with ``json_schema``: the reply
    #: schema's branches: both, tool calls only, answer only).
    tool_choice: str = "auto"
    #: The first step must call a tool (``tool_choice`` "required" for it): a small
    #: model otherwise answers from its own weights what a tool should look up.
    first_step_calls_tool: bool = False
    #: Steps that may call tools; the step after them must answer (``tool_choice``
    #: "none" for it). ``None``: no limit but the run's ``max_steps``. A small model
    #: that would call tools again and again answers from what it observed.
    max_tool_steps: int | None = None
    #: ``json_schema`` format: keys added at the top of the reply schema for the
    #: server's grammar engine, e.g. ``{"x-guidance": {"whitespace_flexible": False}}``
    #: makes llama.cpp (llguidance) emit compact JSON: fewer tokens per step.
    schema_extensions: Mapping[str, Any] = field(default_factory=dict)
    #: ``json_schema`` format: the longest answer, in characters; keep it well within
    #: ``max_tokens`` so that a constrained reply is never cut in the middle.
    answer_max_chars: int | None = None
    #: Extra top-level request fields for a server's own parameters (llama.cpp:
    #: ``repeat_penalty``, ``cache_prompt``, ...). Never a place for credentials: the
    #: sidecar's ``llm`` tool adds those.
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    parallel_tool_calls: bool = True
    temperature: float | None = 0.0
    max_tokens: int | None = 1024
    #: Longest wait for one completion (bounded also by the run's deadline).
    timeout_s: float = 60.0
    #: Retries of a RATE_LIMITED or OVERLOADED completion request.
    max_retries: int = 2

    def __post_init__(self) -> None:
        if self.tool_format not in TOOL_FORMATS:
            raise ValueError(
                f"tool_format must be one of {', '.join(TOOL_FORMATS)}, not {self.tool_format!r}"
            )
        if self.max_tool_steps is not None and self.max_tool_steps < 0:
            raise ValueError("max_tool_steps must not be negative")
        if self.tool_choice not in ("auto", "required", "none"):
            raise ValueError(
                f"tool_choice must be auto, required or none, not {self.tool_choice!r}"
            )


def openai_tools(tools: Sequence[ToolInfo]) -> list[dict[str, Any]]:
    """The ``tools`` parameter: one function per tool, parameters = its input schema
    (``$ref``s inlined: most providers cannot resolve them)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
            },
        }
        for t in tools
    ]


def openai_messages(state: PlanningState) -> list[dict[str, Any]]:
    """The conversation so far, every tool call answered by a tool message."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": state.system_prompt or DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": state.task},
    ]
    for turn in state.history:
        messages.append(
            {
                "role": "assistant",
                "content": turn.step.text or None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.raw_arguments},
                    }
                    for call in turn.step.tool_calls
                ],
            }
        )
        messages += [
            {"role": "tool", "tool_call_id": obs.call.id, "content": obs.content}
            for obs in turn.observations
        ]
    return messages


class OpenAIPlanner:
    """Plans with a chat-completions model; its requests go through the sidecar."""

    name = "openai"

    def __init__(self, client: ToolCaller, *, options: OpenAIOptions | None = None) -> None:
        self.client = client
        self.options = options or OpenAIOptions()

    @property
    def ready(self) -> bool:
        return True

    @property
    def reserved_tools(self) -> frozenset[str]:
        return frozenset({self.options.llm_tool})

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _tool_choice(self, state: PlanningState) -> str:
        o = self.options
        if o.max_tool_steps is not None and state.step_index >= o.max_tool_steps:
            return "none"
        if o.first_step_calls_tool and not state.history and o.tool_choice != "none":
            return "required"
        return o.tool_choice

    def request_body(self, state: PlanningState) -> dict[str, Any]:
        o = self.options
        tools = [t for t in state.tools if t.name != o.llm_tool]
        choice = self._tool_choice(state)
        body: dict[str, Any] = {"model": o.model}
        if o.tool_format == "json_schema":
            system = state.system_prompt or DEFAULT_SYSTEM_PROMPT
            body["messages"] = json_step_messages(state, system, tools)
            schema = step_schema(
                tools,
                state.max_tool_calls,
                calls=choice != "none",
                answer=choice != "required" or not tools,
                answer_max_chars=o.answer_max_chars,
            )
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "step",
                    "strict": True,
                    "schema": {**schema, **o.schema_extensions},
                },
            }
        else:
            body["messages"] = openai_messages(state)
            if tools:
                body["tools"] = openai_tools(tools)
                body["tool_choice"] = choice
                body["parallel_tool_calls"] = o.parallel_tool_calls
        if o.temperature is not None:
            body["temperature"] = o.temperature
        if o.max_tokens is not None:
            body["max_tokens"] = o.max_tokens
        for key, value in o.extra_body.items():
            body.setdefault(key, value)
        return body

    async def plan(self, state: PlanningState) -> Step:
        o = self.options
        body = self.request_body(state)
        attempt = 0
        while True:
            timeout = max(0.01, min(o.timeout_s, state.time_left))
            try:
                result = await self.client.call(
                    o.llm_tool,
                    body,
                    agent_id=state.run_id,
                    timeout=timeout,
                    metadata={"run_id": state.run_id, "purpose": "planner"},
                )
            except SidecarError as exc:
                raise PlannerError(f"LLM request could not be sent: {exc}") from exc
            if (
                result.status in (Status.RATE_LIMITED, Status.OVERLOADED)
                and attempt < o.max_retries
            ):
                attempt += 1
                await asyncio.sleep(max(result.retry_after_ms, 100) / 1000)
                continue
            if result.status is not Status.OK:
                detail = result.error
                if result.result_bytes:
                    detail += f"; body: {result.result_bytes[:300].decode('utf-8', 'replace')}"
                raise PlannerError(f"LLM request failed with {result.status.name}: {detail}")
            if o.tool_format == "json_schema":
                return parse_json_step(completion_text(result.json()))
            return parse_completion(result.json())


def completion_text(response: Any) -> str:
    """``choices[0].message.content`` of a chat-completions response."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise PlannerOutputError(
            "the LLM response has no choices[0].message.content", str(response)[:2000]
        ) from exc
    if not isinstance(content, str):
        raise PlannerOutputError("choices[0].message.content is not text", str(content)[:2000])
    if response["choices"][0].get("finish_reason") == "length":
        raise PlannerOutputError(
            "the reply was cut at max_tokens (raise max_tokens or lower answer_max_chars)",
            content[:2000],
        )
    return content


def parse_completion(response: Any) -> Step:
    """A chat-completions response as a step; raises :class:`PlannerOutputError` if unusable."""
    try:
        message = response["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as exc:
        raise PlannerOutputError(
            "the LLM response has no choices[0].message", str(response)[:2000]
        ) from exc
    if not isinstance(message, dict):
        raise PlannerOutputError("choices[0].message is not an object", str(message)[:2000])
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise PlannerOutputError("tool_calls is not a list", str(raw_calls)[:2000])
    calls: list[ToolCallRequest] = []
    for raw in raw_calls:
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise PlannerOutputError("a tool call has no function name", str(raw)[:2000])
        call_id = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id") else None
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str | dict):
            arguments = str(arguments)
        calls.append(parse_arguments(call_id or new_call_id(), function["name"], arguments))
    if calls:
        return Step.calls(*calls, text=text)
    if text.strip():
        return Step.answer(text.strip())
    raise PlannerOutputError("the LLM answered with neither tool calls nor content", str(message))
