"""The fixed planning-quality task set: demo tasks with checkable expected outcomes.

Each :class:`EvalTask` names the tool calls a good plan makes (tool and the arguments that
matter) and values the final answer must contain. Expected values are computed here from
the demo tool service's own code and data (``demo_tools``), so they match what the tools
return: a task passes when the right tool was called with the right arguments *and* the
answer states the right value, as a person checking the answer would require.

Argument matching is lenient where the tool is: city names ignore case and accents,
calculator expressions are compared by their value (``17*23`` and ``23 * 17`` are the same
call), search queries need one of the key terms.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from demo_tools import calculator, clock, units, weather

__all__ = ["TASKS", "EvalTask", "Expected", "fold"]


def fold(text: str) -> str:
    """Lower case without accents: "Reykjavík" and "reykjavik" compare equal."""
    decomposed = unicodedata.normalize("NFKD", str(text).casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


Matcher = Callable[[Any], bool]


def same_text(expected: str) -> Matcher:
    return lambda got: isinstance(got, str) and fold(got).strip() == fold(expected)


def same_number(expected: float) -> Matcher:
    def match(got: Any) -> bool:
        try:
            return math.isclose(float(got), expected, rel_tol=1e-6, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False

    return match


def same_value(expected: float) -> Matcher:
    """A calculator expression whose value is ``expected``."""

    def match(got: Any) -> bool:
        try:
            value = calculator.evaluate(str(got))
        except (calculator.CalculatorError, ValueError, TypeError):
            return False
        return math.isclose(float(value), expected, rel_tol=1e-6, abs_tol=1e-9)

    return match


def has_any(*terms: str) -> Matcher:
    return lambda got: isinstance(got, str) and any(fold(t) in fold(got) for t in terms)


def unit_of(expected: str) -> Matcher:
    return lambda got: isinstance(got, str) and got.strip().lower() == expected


@dataclass(frozen=True, slots=True)
class Expected:
    """A call the plan must contain: the tool, and a matcher per argument that matters
    (arguments left out may take any valid value, e.g. the weather tool's default units)."""

    tool: str
    args: dict[str, Matcher] = field(default_factory=dict)

    def matches(self, name: str, arguments: dict[str, Any] | None) -> bool:
        if name != self.tool or not isinstance(arguments, dict):
            return False
        return all(key in arguments and ok(arguments[key]) for key, ok in self.args.items())


@dataclass(frozen=True, slots=True)
class EvalTask:
    id: str
    category: str
    task: str
    calls: tuple[Expected, ...]
    #: The answer must contain one of these (folded); computed when scored (time tasks).
    answer: Callable[[], tuple[str, ...]]


def number_forms(x: float) -> tuple[str, ...]:
    """How an answer may write ``x``: as the tool returned it, or rounded to 1 or 0 places."""
    forms = {repr(x) if isinstance(x, float) else str(x)}
    if isinstance(x, float):
        if x.is_integer():
            forms.add(str(int(x)))
        forms.add(f"{x:.2f}".rstrip("0").rstrip("."))
        forms.add(f"{x:.1f}".rstrip("0").rstrip("."))
        if abs(x) >= 10:
            forms.add(str(round(x)))
    return tuple(sorted(forms))


def fixed(*values: str) -> Callable[[], tuple[str, ...]]:
    return lambda: values


_STORE = weather.WeatherStore(
    json.loads((resources.files("demo_tools") / "data" / "weather.json").read_bytes())
)


def _report(city: str, unit: weather.Units = "c") -> dict[str, Any]:
    report = _STORE.report(city, unit, dt.date.today())
    assert report is not None, city
    return report


def weather_task(
    tid: str, task: str, city: str, field_: str, unit: weather.Units = "c"
) -> EvalTask:
    report = _report(city, unit)
    value = report["current"][field_]
    args: dict[str, Matcher] = {"city": same_text(city)}
    if unit == "f":
        args["units"] = unit_of("f")
    forms = number_forms(value) if isinstance(value, int | float) else (str(value),)
    return EvalTask(tid, "weather", task, (Expected("weather", args),), fixed(*forms))


def compare_task(tid: str, task: str, a: str, b: str, warmer: bool = True) -> EvalTask:
    ta, tb = (_report(c)["current"]["temperature"] for c in (a, b))
    pick = (a if ta > tb else b) if warmer else (a if ta < tb else b)
    return EvalTask(
        tid,
        "weather, two cities",
        task,
        (Expected("weather", {"city": same_text(a)}), Expected("weather", {"city": same_text(b)})),
        fixed(pick),
    )


def calc_task(tid: str, task: str, expression: str) -> EvalTask:
    value = float(calculator.evaluate(expression))
    return EvalTask(
        tid,
        "calculator",
        task,
        (Expected("calculator", {"expression": same_value(value)}),),
        fixed(*number_forms(value)),
    )


def convert_task(tid: str, task: str, value: float, source: str, target: str) -> EvalTask:
    result = units.round_significant(units.convert(value, source, target))
    return EvalTask(
        tid,
        "units",
        task,
        (
            Expected(
                "convert_units",
                {"value": same_number(value), "from": unit_of(source), "to": unit_of(target)},
            ),
        ),
        fixed(*number_forms(result)),
    )


def search_task(tid: str, task: str, terms: tuple[str, ...], answer: tuple[str, ...]) -> EvalTask:
    return EvalTask(
        tid, "search", task, (Expected("search", {"query": has_any(*terms)}),), fixed(*answer)
    )


def time_task(tid: str, task: str, zone: str) -> EvalTask:
    def answer() -> tuple[str, ...]:
        # The hour there now, or a minute ago (a run that straddles the turn of an hour).
        now = dt.datetime.now(dt.UTC)
        hours = {
            str(clock.now_in(zone, now - dt.timedelta(minutes=m))["iso"])[11:13] for m in (0, 2)
        }
        return tuple(f"{h}:" for h in sorted(hours))

    zone_is = same_text(zone)
    return EvalTask(tid, "time", task, (Expected("current_time", {"tz": zone_is}),), answer)


TASKS: tuple[EvalTask, ...] = (
    # ---- weather: one city, one value (17)
    weather_task("w01", "What is the temperature in Tokyo right now?", "Tokyo", "temperature"),
    weather_task("w02", "How warm is it in Paris today?", "Paris", "temperature"),
    weather_task("w03", "What's the weather like in London?", "London", "conditions"),
    weather_task("w04", "What's the temperature in Berlin?", "Berlin", "temperature"),
    weather_task("w05", "How humid is it in Singapore?", "Singapore", "humidity"),
    weather_task("w06", "How windy is it in Sydney?", "Sydney", "wind_speed"),
    weather_task("w07", "What are the conditions in Moscow?", "Moscow", "conditions"),
    weather_task("w08", "Current temperature in Madrid?", "Madrid", "temperature"),
    weather_task("w09", "What is the humidity in Mumbai?", "Mumbai", "humidity"),
    weather_task("w10", "Temperature in New York in Fahrenheit?", "New York", "temperature", "f"),
    weather_task("w11", "How hot is it in Dubai in °F?", "Dubai", "temperature", "f"),
    weather_task("w12", "What's the weather in Cairo?", "Cairo", "conditions"),
    weather_task("w13", "Is it raining in Amsterdam?", "Amsterdam", "conditions"),
    weather_task("w14", "What is the temperature in Reykjavík?", "Reykjavík", "temperature"),
    weather_task("w15", "How cold is it in Stockholm?", "Stockholm", "temperature"),
    weather_task("w16", "What is the wind speed in Chicago?", "Chicago", "wind_speed"),
    weather_task("w17", "Temperature in São Paulo?", "São Paulo", "temperature"),
    # ---- weather: compare two cities (parallel calls) (6)
    compare_task("c01", "Is it warmer in Cairo or in Reykjavík today?", "Cairo", "Reykjavík"),
    compare_task("c02", "Which is warmer right now, Tokyo or Seoul?", "Tokyo", "Seoul"),
    compare_task("c03", "Is London or Rome warmer?", "London", "Rome"),
    compare_task(
        "c04", "Which city is colder, Moscow or Berlin?", "Moscow", "Berlin", warmer=False
    ),
    compare_task("c05", "Is it hotter in Delhi or in Lagos?", "Delhi", "Lagos"),
    compare_task(
        "c06", "Which is colder today: Stockholm or Chicago?", "Stockholm", "Chicago", warmer=False
    ),
    # ---- calculator (14)
    calc_task("m01", "What is 17 * 23?", "17 * 23"),
    calc_task("m02", "Calculate (17.5 * 4) / 3.", "(17.5 * 4) / 3"),
    calc_task("m03", "What is 1234 divided by 7?", "1234 / 7"),
    calc_task("m04", "What is 2 ** 10 + sqrt(144)?", "2 ** 10 + sqrt(144)"),
    calc_task("m05", "What is the square root of 2 times pi?", "sqrt(2) * pi"),
    calc_task("m06", "What is 45 + 67 + 89?", "45 + 67 + 89"),
    calc_task("m07", "Compute 1000 - 387.", "1000 - 387"),
    calc_task("m08", "What is 12.5 percent of 640? (640 * 0.125)", "640 * 0.125"),
    calc_task("m09", "What is 3 to the power of 7?", "3 ** 7"),
    calc_task("m10", "What is log10(1000000)?", "log10(1000000)"),
    calc_task("m11", "Evaluate 99 * 99 - 1.", "99 * 99 - 1"),
    calc_task("m12", "What is 365 * 24?", "365 * 24"),
    calc_task("m13", "What is 81 divided by 4.5?", "81 / 4.5"),
    calc_task("m14", "What is the square root of 1764?", "sqrt(1764)"),
    # ---- unit conversion (12)
    convert_task("u01", "How many miles is a 42.195 km marathon?", 42.195, "km", "mi"),
    convert_task("u02", "Convert 100 Celsius to Fahrenheit.", 100, "c", "f"),
    convert_task("u03", "How many pounds are 70 kilograms?", 70, "kg", "lb"),
    convert_task("u04", "What is 2 gallons in litres?", 2, "gal", "l"),
    convert_task("u05", "Convert 5 feet to centimetres.", 5, "ft", "cm"),
    convert_task("u06", "How many kilometres are 26.2 miles?", 26.2, "mi", "km"),
    convert_task("u07", "Convert 350 Fahrenheit to Celsius.", 350, "f", "c"),
    convert_task("u08", "How many grams are 8 ounces?", 8, "oz", "g"),
    convert_task("u09", "Convert 120 kph to mph.", 120, "kph", "mph"),
    convert_task("u10", "How many inches are 30 cm?", 30, "cm", "in"),
    convert_task("u11", "Convert 3 cups to millilitres.", 3, "cup", "ml"),
    convert_task("u12", "What is 0 Celsius in kelvin?", 0, "c", "k"),
    # ---- search (8)
    search_task(
        "s01",
        "Find articles about circuit breakers and the half-open state.",
        ("circuit", "breaker", "half-open"),
        ("circuit breaker",),
    ),
    search_task(
        "s02",
        "Search for how rate limiting with a token bucket works.",
        ("token bucket", "rate limit"),
        ("token bucket",),
    ),
    search_task(
        "s03", "What does the knowledge base say about Kubernetes pods?", ("pod",), ("pod",)
    ),
    search_task("s04", "Look up gRPC streaming.", ("grpc", "stream"), ("stream",)),
    search_task(
        "s05",
        "Search the knowledge base for exponential backoff with jitter.",
        ("backoff", "jitter", "retr"),
        ("backoff", "jitter"),
    ),
    search_task(
        "s06", "Find an article about cooking pasta.", ("pasta",), ("pasta", "salted", "boil")
    ),
    search_task(
        "s07", "What is the Maillard reaction? Search for it.", ("maillard",), ("maillard",)
    ),
    search_task(
        "s08", "Search for how Prometheus metrics work.", ("prometheus", "metric"), ("prometheus",)
    ),
    # ---- current time (7)
    time_task("t01", "What time is it in Tokyo (JST)?", "JST"),
    time_task("t02", "What's the current time in UTC?", "UTC"),
    time_task("t03", "What time is it now in CET?", "CET"),
    time_task("t04", "What is the time in India (IST)?", "IST"),
    time_task("t05", "Current time in PST?", "PST"),
    time_task("t06", "What time is it in EST?", "EST"),
    time_task("t07", "Tell me the time in Singapore (SGT).", "SGT"),
)

assert len({t.id for t in TASKS}) == len(TASKS), "task ids are unique"
