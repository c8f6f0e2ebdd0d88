"""OpenAIPlanner's requests and the JSON-step format (no server: the bodies and parsing).

The planner against real servers is in the cross-language tests: tests/test_brain_openai.py
(a scripted server) and tests/test_brain_llamacpp.py (llama.cpp).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest

from brain._exceptions import PlannerOutputError
from brain._planners.base import Observation, PlanningState, Step, ToolCallRequest, Turn
from brain._planners.json_steps import parse_json_step, step_schema
from brain._planners.openai import OpenAIOptions, OpenAIPlanner
from brain._types import ToolInfo

WEATHER = ToolInfo(
    "weather",
    "Current weather for a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "units": {"enum": ["c", "f"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
    None,
    5000,
    (),
)
CALC = ToolInfo(
    "calculator",
    "Evaluate an expression.",
    {
        "type": "object",
        "properties": {"expression": {"type": "string", "minLength": 1}},
        "required": ["expression"],
        "additionalProperties": False,
    },
    None,
    5000,
    (),
)
LLM = ToolInfo("llm", "chat completions", {"type": "object"}, None, 5000, ())


def planner(**options: Any) -> OpenAIPlanner:
    return OpenAIPlanner(None, options=OpenAIOptions(tool_format="json_schema", **options))  # type: ignore[arg-type]


def state(history: tuple[Turn, ...] = ()) -> PlanningState:
    return PlanningState(
        run_id="r", task="Weather in Oslo?", tools=[WEATHER, CALC, LLM], history=history
    )


def one_turn() -> Turn:
    call = ToolCallRequest("c1", "weather", {"city": "Oslo"}, '{"city": "Oslo"}')
    return Turn(Step.calls(call), (Observation(call, "ok", '{"temp": 4.5}'),))


def schema_of(body: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = body["response_format"]["json_schema"]["schema"]
    return schema


def test_the_reply_schema_accepts_real_calls_and_answers_only() -> None:
    schema = step_schema([WEATHER, CALC], max_calls=2)
    valid = [
        {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]},
        {
            "tool_calls": [
                {"name": "weather", "arguments": {"city": "Oslo", "units": "f"}},
                {"name": "calculator", "arguments": {"expression": "1+1"}},
            ]
        },
        {"answer": "4.5 °C"},
    ]
    for reply in valid:
        jsonschema.validate(reply, schema)
    invalid = [
        {"tool_calls": [{"name": "search", "arguments": {"query": "x"}}]},  # no such tool
        {"tool_calls": [{"name": "weather", "arguments": {"town": "Oslo"}}]},  # bad arguments
        {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo", "units": "k"}}]},
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "1"}}] * 3},  # > 2
        {"tool_calls": []},
        {"answer": ""},
        {"answer": "x", "tool_calls": []},
    ]
    for reply in invalid:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(reply, schema)


def test_the_request_offers_the_tools_but_never_the_llm_tool() -> None:
    body = planner().request_body(state())
    assert "tools" not in body  # described in the prompt instead
    system = body["messages"][0]["content"]
    assert "- weather: Current weather" in system
    assert "- calculator:" in system
    assert "- llm:" not in system
    calls = schema_of(body)["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"]
    names = {branch["properties"]["name"]["const"] for branch in calls}
    assert names == {"weather", "calculator"}
    assert body["response_format"]["json_schema"]["strict"] is True


def test_first_step_calls_a_tool_and_max_tool_steps_forces_the_answer() -> None:
    p = planner(first_step_calls_tool=True, max_tool_steps=1)
    first = schema_of(p.request_body(state()))
    assert first["required"] == ["tool_calls"]  # only the tool-call branch
    second = schema_of(p.request_body(state((one_turn(),))))
    assert second["required"] == ["answer"]  # only the answer branch
    # Without the options the model chooses.
    assert "anyOf" in schema_of(planner().request_body(state((one_turn(),))))


def test_results_go_back_as_a_user_message_with_the_task() -> None:
    body = planner().request_body(state((one_turn(),)))
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert orjson.loads(body["messages"][2]["content"]) == {
        "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]
    }
    results = body["messages"][3]["content"]
    assert 'weather({"city": "Oslo"}) returned {"temp": 4.5}' in results
    assert results.endswith("The task: Weather in Oslo?")


def test_extensions_and_extra_body_are_added() -> None:
    p = planner(
        schema_extensions={"x-guidance": {"whitespace_flexible": False}},
        extra_body={"repeat_penalty": 1.1, "model": "not-this"},
    )
    body = p.request_body(state())
    assert schema_of(body)["x-guidance"] == {"whitespace_flexible": False}
    assert body["repeat_penalty"] == 1.1
    assert body["model"] == "default"  # extra_body never overrides what the planner sets


def test_parse_json_step() -> None:
    step = parse_json_step('{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}')
    assert [(c.name, c.arguments) for c in step.tool_calls] == [("weather", {"city": "Oslo"})]
    assert parse_json_step('{"answer": " 4.5 °C "}').final == "4.5 °C"
    malformed = parse_json_step('{"tool_calls": [{"name": "weather", "arguments": [1]}]}')
    assert malformed.tool_calls[0].arguments is None
    assert "must be a JSON object" in malformed.tool_calls[0].error
    for bad, reason in [
        ('{"tool_calls": [{"name": "w"', "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"answer": ""}', "neither"),
        ('{"tool_calls": [{"arguments": {}}]}', "no name"),
    ]:
        with pytest.raises(PlannerOutputError, match=reason):
            parse_json_step(bad)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="tool_format"):
        OpenAIOptions(tool_format="xml")
    with pytest.raises(ValueError, match="tool_choice"):
        OpenAIOptions(tool_choice="sometimes")
    with pytest.raises(ValueError, match="max_tool_steps"):
        OpenAIOptions(max_tool_steps=-1)
    with pytest.raises(ValueError, match="branch"):
        step_schema([WEATHER], 1, calls=False, answer=False)
