"""Answers, not dumps: the router's final answer.

Without a model, sentences built from the demo tools' real results (computed by the demo
tools' own code, as the service returns them). With a local model loaded, the model
writes the answer, constrained to the answer branch even when a call failed; when the
model fails (here: a prompt longer than its context), the answer is written without it.
The bundled SmolLM2 writing answers through the real sidecar is in
tests/test_brain_router.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from test_planner_local import build_tiny_model
from test_planner_router import demo_tools

from brain._embedding import SentenceEmbedder
from brain._engine.engine import EngineOptions
from brain._planners.answers import describe_observations
from brain._planners.base import Observation, PlanningState, Step, ToolCallRequest, Turn
from brain._planners.local import LocalOptions, LocalPlanner
from brain._planners.router import RouterPlanner
from demo_tools import calculator, clock, units, weather

pytestmark = pytest.mark.asyncio(loop_scope="module")

STORE = weather.WeatherStore(
    json.loads((resources.files("demo_tools") / "data" / "weather.json").read_bytes())
)


def ok(name: str, args: dict[str, Any], result: Any) -> Observation:
    call = ToolCallRequest(f"c-{name}", name, args)
    return Observation(call, "ok", json.dumps(result), result)


def failed(name: str, args: dict[str, Any], status: str, error: str) -> Observation:
    call = ToolCallRequest(f"c-{name}", name, args)
    content = json.dumps({"status": 502, "body": json.dumps({"error": error})})
    return Observation(call, status, content)


def report(city: str) -> dict[str, Any]:
    value = STORE.report(city, "c", dt.date.today())
    assert value is not None
    return value


def looks_like_prose(text: str) -> None:
    """No record syntax: no ``path=value``, no JSON, no one-line-per-call dump."""
    assert not re.search(r"\w=\S", text), text
    assert "{" not in text, text
    assert "\n" not in text, text
    assert text.endswith("."), text


async def test_a_comparison_is_answered_first_then_the_facts() -> None:
    cairo, reykjavik = report("Cairo"), report("Reykjavík")
    text = describe_observations(
        "Is it warmer in Cairo or in Reykjavík today?",
        [ok("weather", {"city": "Cairo"}, cairo), ok("weather", {"city": "Reykjavík"}, reykjavik)],
    )
    looks_like_prose(text)
    t_c, t_r = cairo["current"]["temperature"], reykjavik["current"]["temperature"]
    warmer, colder = ("Cairo", "Reykjavík") if t_c > t_r else ("Reykjavík", "Cairo")
    assert text.startswith(f"{warmer} is warmer than {colder} (temperature "), text
    assert f"{max(t_c, t_r):g} °C against {min(t_c, t_r):g} °C" in text, text
    assert f"Cairo, Egypt: temperature {t_c:g} °C" in text, text


async def test_colder_picks_the_lowest() -> None:
    moscow, berlin = report("Moscow"), report("Berlin")
    text = describe_observations(
        "Which city is colder, Moscow or Berlin?",
        [ok("weather", {"city": "Moscow"}, moscow), ok("weather", {"city": "Berlin"}, berlin)],
    )
    colder = min(
        ("Moscow", moscow), ("Berlin", berlin), key=lambda r: r[1]["current"]["temperature"]
    )
    assert text.startswith(f"{colder[0]} is colder than "), text


async def test_one_city_reads_as_a_sentence_with_units() -> None:
    tokyo = report("Tokyo")
    text = describe_observations(
        "How warm is it in Tokyo?", [ok("weather", {"city": "Tokyo"}, tokyo)]
    )
    looks_like_prose(text)
    now = tokyo["current"]
    assert text.startswith(
        f"Tokyo, Japan: temperature {now['temperature']:g} °C, humidity {now['humidity']}, "
        f"wind speed {now['wind_speed']:g} km/h, {now['conditions']}, forecast (3) starting with"
    ), text


async def test_arithmetic_conversions_and_times_read_as_statements() -> None:
    value = calculator.evaluate("1234 / 7")
    assert (
        describe_observations(
            "What is 1234 divided by 7?",
            [
                ok(
                    "calculator",
                    {"expression": "1234 / 7"},
                    {"expression": "1234 / 7", "value": value},
                )
            ],
        )
        == "1234 / 7 = 176.2857143."
    )
    result = units.round_significant(units.convert(42.195, "km", "mi"))
    converted = {"value": 42.195, "from": "km", "to": "mi", "result": result, "unit": "mi"}
    assert (
        describe_observations(
            "How many miles is 42.195 km?",
            [ok("convert_units", {"value": 42.195, "from": "km", "to": "mi"}, converted)],
        )
        == f"42.195 km is {result:g} mi."
    )
    at = dt.datetime(2026, 12, 2, 5, 7, tzinfo=dt.UTC)
    now = clock.now_in("JST", at)
    assert describe_observations(
        "What time is it in JST?", [ok("current_time", {"tz": "JST"}, now)]
    ) == ("In JST (Japan Standard Time) it is 14:07 on Wednesday, 2026-12-02 (UTC+09:00).")


async def test_search_hits_are_named_with_a_snippet_and_failures_say_why() -> None:
    hits = {
        "query": "token bucket",
        "results": [
            {
                "id": "a",
                "title": "Token buckets",
                "snippet": "A bucket refills at a fixed rate.",
                "score": 3.1,
            },
            {"id": "b", "title": "Leaky buckets", "snippet": "", "score": 1.2},
        ],
    }
    text = describe_observations(
        "Search for token buckets.",
        [
            ok("search", {"query": "token bucket"}, hits),
            failed("calculator", {"expression": "sqrt(-1)"}, "upstream_error", "math domain error"),
        ],
    )
    assert text == (
        'Top results for "token bucket": "Token buckets" (A bucket refills at a fixed rate.); '
        '"Leaky buckets". The calculator for sqrt(-1) failed (upstream_error): math domain error.'
    )
    assert describe_observations(
        "Find pasta.", [ok("search", {"query": "pasta"}, {"query": "pasta", "results": []})]
    ) == ("No results for pasta.")


# ---------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Room for the system prompt, the results and an answer (the tiny tokenizer's tokens
    # are short), and a context a long task can still overflow.
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), n_positions=2048)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def router_with_model(model_dir: Path) -> AsyncIterator[RouterPlanner]:
    options = LocalOptions(max_new_tokens=40, device="cpu", engine=EngineOptions(cpu_threads=1))
    router = RouterPlanner(
        SentenceEmbedder(), answer_model=LocalPlanner(model_dir, options=options)
    )
    await router.start()
    assert router.ready
    yield router
    await router.aclose()


def answered_state(task: str, observations: list[Observation]) -> PlanningState:
    """The state after one step of calls: the router's next step is the answer."""
    step = Step.calls(*(o.call for o in observations))
    weather_only = [t for t in demo_tools() if t.name == "weather"]
    return PlanningState(
        run_id="r", task=task, tools=weather_only, history=(Turn(step, tuple(observations)),)
    )


async def test_the_loaded_model_writes_the_answer_even_after_a_failed_call(
    router_with_model: RouterPlanner,
) -> None:
    model = router_with_model.answer_model
    assert model is not None
    before = model.steps
    observations = [
        ok("weather", {"city": "Cairo"}, report("Cairo")),
        failed("weather", {"city": "Atlantis"}, "upstream_error", "unknown city"),
    ]
    state = answered_state("Is it warmer in Cairo or Atlantis?", observations)
    step = await router_with_model.plan(state)
    # A random-weight model babbles, but under the answer-only grammar: an answer, never a
    # tool call (a failed call would otherwise let the local planner call again).
    assert step.final is not None
    assert not step.tool_calls
    assert step.final != router_with_model.answer(state.task, observations)
    assert len(step.final) <= LocalOptions().answer_max_chars
    assert model.steps == before + 1
    assert router_with_model.answer_fallbacks == 0


async def test_a_failing_model_leaves_the_answer_to_the_sentences(
    router_with_model: RouterPlanner,
) -> None:
    # The tiny model's context is 2048 positions: a task this long cannot be prompted.
    task = "How warm is it in Tokyo? " + "Please answer. " * 1000
    observations = [ok("weather", {"city": "Tokyo"}, report("Tokyo"))]
    step = await router_with_model.plan(answered_state(task, observations))
    assert step.final == router_with_model.answer(task, observations)
    assert step.text.startswith("answered without the model ("), step.text
    assert router_with_model.answer_fallbacks == 1
