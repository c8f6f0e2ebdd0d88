"""Tests for the demo tool service, over real HTTP on loopback.

The sidecar treats these endpoints as black boxes, so they are tested the same
way: status codes and JSON bodies, including every kind of bad input (which
must be a 4xx with ``{"error": ...}``, never a 500).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from demo_tools import COUNTERS, create_app
from demo_tools.calculator import MAX_EXPRESSION_CHARS
from demo_tools.clock import ZONE_NAMES, now_in
from demo_tools.search import tokenize
from demo_tools.units import UNIT_NAMES

Client = TestClient[web.Request, web.Application]

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app())) as c:
        yield c


async def get_json(
    client: Client,
    path: str,
    status: int = 200,
    query: Mapping[str, str] | None = None,
    **params: str,
) -> Any:
    """GETs ``path``, checks the status and that the body is JSON, and returns it."""
    async with client.get(path, params={**(query or {}), **params}) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        return await resp.json()


async def calc(client: Client, body: Any, status: int = 200) -> Any:
    async with client.post("/calculator", json=body) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        return await resp.json()


# --- calculator -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 * (3 + 4.5)", 15.0),
        ("2 + 3", 5),
        ("-2 ** 2", -4),
        ("7 // 2 + 7 % 2", 4),
        ("2 ** -1", 0.5),
        ("sqrt(16) + abs(-2)", 6.0),
        ("max(1, 7, 3) - min(4, 2)", 5),
        ("round(pi, 2)", 3.14),
        ("log(8, 2)", 3.0),
        ("exp(0) + cos(0) + sin(0)", 2.0),
        ("  1e3 / 8  ", 125.0),
    ],
)
async def test_calculator_evaluates(client: Client, expression: str, value: float) -> None:
    body = await calc(client, {"expression": expression})
    assert body == {"expression": expression, "value": pytest.approx(value)}
    assert type(body["value"]) is type(value)  # integers stay integers


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "().__class__.__bases__",
        "open('/etc/passwd')",
        "x + 1",
        "'a' * 3",
        "[1, 2]",
        "lambda: 1",
        "1 < 2",
        "1 if 1 else 2",
        "sqrt(x=4)",
        "1 +",
        "",
        "1" + "+1" * MAX_EXPRESSION_CHARS,
    ],
)
async def test_calculator_rejects_unsafe_or_invalid(client: Client, expression: str) -> None:
    body = await calc(client, {"expression": expression}, status=400)
    assert isinstance(body["error"], str)
    assert body["error"]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("1 // 0.0", "division by zero"),
        ("9 ** 9 ** 9", "exponent"),
        ("2 ** 1000", "exponent"),
        ("(10 ** 50) ** 100", "too large"),
        ("1e308 * 10", "not finite"),
        ("exp(1000)", "too large"),
        ("sqrt(-1)", "math"),
        ("(-8) ** 0.5", "not a real number"),
        ("round(1, 10 ** 9)", "digits"),
        ("min()", "argument"),
    ],
)
async def test_calculator_guards(client: Client, expression: str, message: str) -> None:
    body = await calc(client, {"expression": expression}, status=400)
    assert message in body["error"]


@pytest.mark.parametrize(
    "body", [["2 + 2"], {"expr": "1"}, {"expression": 42}, {"expression": None}, "2 + 2"]
)
async def test_calculator_rejects_bad_bodies(client: Client, body: Any) -> None:
    assert "error" in await calc(client, body, status=400)


async def test_calculator_rejects_non_json_and_huge_bodies(client: Client) -> None:
    async with client.post("/calculator", data=b"{nope") as resp:
        assert resp.status == 400
        assert "JSON" in (await resp.json())["error"]
    async with client.post("/calculator", data=b"x" * 100_000) as resp:
        assert resp.status == 413
        assert "error" in await resp.json()


# --- convert ----------------------------------------------------------------


async def test_convert_response_shape(client: Client) -> None:
    body = await get_json(client, "/convert", query={"value": "10", "from": "km", "to": "mi"})
    assert body == {"value": 10, "from": "km", "to": "mi", "result": 6.21371, "unit": "mi"}


@pytest.mark.parametrize(
    ("value", "source", "target", "result"),
    [
        ("10", "km", "mi", 6.21371),
        ("100", "c", "f", 212.0),
        ("-40", "f", "c", -40.0),
        ("0", "k", "c", -273.15),
        ("-273.15", "c", "k", 0.0),
        ("98.6", "f", "k", 310.15),
        ("1", "gal", "l", 3.78541),
        ("2", "cup", "ml", 473.176),
        ("100", "kph", "mph", 62.1371),
        ("1", "mps", "kph", 3.6),
        ("1", "lb", "g", 453.592),
        ("16", "oz", "lb", 1.0),
        ("12", "in", "ft", 1.0),
        ("1", "yd", "cm", 91.44),
        ("2.5", "M", "MM", 2500.0),
    ],
)
async def test_convert(client: Client, value: str, source: str, target: str, result: float) -> None:
    body = await get_json(client, "/convert", query={"value": value, "from": source, "to": target})
    assert body["result"] == pytest.approx(result, rel=1e-5, abs=1e-9)
    assert body["unit"] == body["to"] == target.lower()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"value": "1", "from": "kg", "to": "m"}, "cannot convert mass"),
        ({"value": "1", "from": "c", "to": "l"}, "cannot convert temperature"),
        ({"value": "1", "from": "kelvinn", "to": "c"}, "unknown unit"),
        ({"value": "-300", "from": "c", "to": "f"}, "absolute zero"),
        ({"value": "-1", "from": "k", "to": "c"}, "absolute zero"),
        ({"value": "ten", "from": "km", "to": "mi"}, "must be a number"),
        ({"value": "nan", "from": "km", "to": "mi"}, "finite"),
        ({"value": "inf", "from": "km", "to": "mi"}, "finite"),
        ({"from": "km", "to": "mi"}, "'value'"),
        ({"value": "1", "to": "mi"}, "'from'"),
        ({"value": "1", "from": "km"}, "'to'"),
    ],
)
async def test_convert_errors(client: Client, params: dict[str, str], message: str) -> None:
    body = await get_json(client, "/convert", status=400, query=params)
    assert message in body["error"]


# --- weather ----------------------------------------------------------------


async def test_weather_shape_and_forecast_dates(client: Client) -> None:
    body = await get_json(client, "/weather/Tokyo")
    assert body["city"] == "Tokyo"
    assert body["country"] == "Japan"
    assert body["units"] == {"temperature": "°C", "wind_speed": "km/h"}
    assert set(body) == {"city", "country", "units", "current", "forecast"}
    assert set(body["current"]) == {"temperature", "humidity", "wind_speed", "conditions"}
    assert 0 <= body["current"]["humidity"] <= 100
    forecast = body["forecast"]
    assert len(forecast) == 3
    today = dt.datetime.now(dt.UTC).date()
    dates = [dt.date.fromisoformat(day["date"]) for day in forecast]
    assert dates[0] - today in (dt.timedelta(days=1), dt.timedelta(days=0))  # midnight race
    assert [b - a for a, b in itertools.pairwise(dates)] == [dt.timedelta(days=1)] * 2
    for day in forecast:
        assert set(day) == {"date", "high", "low", "conditions", "precip_chance"}
        assert day["low"] <= day["high"]


@pytest.mark.parametrize(
    ("name", "city"),
    [
        ("São Paulo", "São Paulo"),
        ("sao paulo", "São Paulo"),
        ("SAO-PAULO", "São Paulo"),
        ("New York", "New York"),
        ("new  york", "New York"),
        ("NYC", "New York"),
        ("reykjavik", "Reykjavík"),
        ("cape_town", "Cape Town"),
    ],
)
async def test_weather_city_matching(client: Client, name: str, city: str) -> None:
    body = await get_json(client, f"/weather/{urllib.parse.quote(name)}")
    assert body["city"] == city


async def test_weather_fahrenheit(client: Client) -> None:
    celsius = await get_json(client, "/weather/London")
    fahrenheit = await get_json(client, "/weather/london", units="F")
    assert fahrenheit["units"] == {"temperature": "°F", "wind_speed": "mph"}
    c, f = celsius["current"], fahrenheit["current"]
    assert f["temperature"] == pytest.approx(c["temperature"] * 9 / 5 + 32, abs=0.05)
    assert f["wind_speed"] == pytest.approx(c["wind_speed"] / 1.609344, abs=0.05)
    assert f["humidity"] == c["humidity"]
    assert fahrenheit["forecast"][0]["high"] == pytest.approx(
        celsius["forecast"][0]["high"] * 9 / 5 + 32, abs=0.05
    )


async def test_weather_unknown_city_is_404_with_known_cities(client: Client) -> None:
    body = await get_json(client, "/weather/Atlantis", status=404)
    assert "unknown city" in body["error"]
    assert "Atlantis" in body["error"]
    assert {"Tokyo", "São Paulo", "New York"} <= set(body["known"])
    assert len(body["known"]) >= 25


async def test_weather_bad_units(client: Client) -> None:
    body = await get_json(client, "/weather/Paris", status=400, units="kelvin")
    assert "units" in body["error"]


# --- search -----------------------------------------------------------------


async def test_search_ranks_circuit_breaker_first(client: Client) -> None:
    body = await get_json(client, "/search", q="circuit breaker")
    assert body["query"] == "circuit breaker"
    results = body["results"]
    assert results[0]["id"] == "circuit-breaker"
    assert "circuit breaker" in results[0]["snippet"].lower()
    assert set(results[0]) == {"id", "title", "snippet", "score"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("token bucket rate limiter", "rate-limiting-token-bucket"),
        ("how long should I cook pasta", "cooking-pasta"),
        ("asyncio cancellation CancelledError", "python-asyncio-cancellation"),
        ("gRPC deadline exceeded", "grpc-deadlines"),
        ("SIGTERM graceful shutdown pods", "kubernetes-graceful-shutdown"),
        ("highest mountain Everest", "geography-himalayas"),
    ],
)
async def test_search_finds_the_right_document(client: Client, query: str, expected: str) -> None:
    body = await get_json(client, "/search", q=query, limit="1")
    assert [r["id"] for r in body["results"]] == [expected]


async def test_search_limit_and_order(client: Client) -> None:
    default = await get_json(client, "/search", q="kubernetes pod container")
    assert len(default["results"]) == 3
    many = await get_json(client, "/search", q="kubernetes pod container", limit="10")
    scores = [r["score"] for r in many["results"]]
    assert 3 < len(scores) <= 10
    assert scores == sorted(scores, reverse=True)
    assert all(s > 0 for s in scores)
    one = await get_json(client, "/search", q="kubernetes pod container", limit="1")
    assert one["results"] == many["results"][:1]


async def test_search_without_matches_is_empty(client: Client) -> None:
    assert (await get_json(client, "/search", q="xyzzy plugh"))["results"] == []
    assert (await get_json(client, "/search", q="the and of"))["results"] == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"q": "rust", "limit": "0"}, "between 1 and 10"),
        ({"q": "rust", "limit": "11"}, "between 1 and 10"),
        ({"q": "rust", "limit": "-3"}, "between 1 and 10"),
        ({"q": "rust", "limit": "three"}, "integer"),
        ({"limit": "3"}, "'q'"),
        ({"q": "   "}, "empty"),
        ({"q": "x" * 201}, "longer"),
    ],
)
async def test_search_errors(client: Client, params: dict[str, str], message: str) -> None:
    body = await get_json(client, "/search", status=400, query=params)
    assert message in body["error"]


def test_tokenize_drops_stopwords_and_folds() -> None:
    assert tokenize("The Circuit Breakers of São Paulo!") == ["circuit", "breaker", "sao", "paulo"]


# --- time, health, plumbing -------------------------------------------------


async def test_time_default_utc(client: Client) -> None:
    body = await get_json(client, "/time")
    assert body["tz"] == "UTC"
    assert body["utc_offset"] == "+00:00"
    stamp = dt.datetime.fromisoformat(body["iso"])
    assert abs((stamp - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    assert body["unix"] == int(stamp.timestamp())


async def test_time_zone_is_case_insensitive(client: Client) -> None:
    body = await get_json(client, "/time", tz="jst")
    assert body["tz"] == "JST"
    assert body["iso"].endswith("+09:00")


async def test_time_unknown_zone(client: Client) -> None:
    body = await get_json(client, "/time", status=400, tz="Mars/Olympus")
    assert "unknown time zone" in body["error"]
    assert "UTC" in body["known"]


def test_now_in_fixed_offsets() -> None:
    now = dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)
    assert now_in("IST", now) == {
        "tz": "IST",
        "name": "India Standard Time",
        "utc_offset": "+05:30",
        "iso": "2024-01-01T05:30:00+05:30",
        "weekday": "Monday",
        "unix": 1704067200,
    }
    assert now_in("pst", now)["iso"] == "2023-12-31T16:00:00-08:00"


async def test_healthz_and_counters(client: Client) -> None:
    assert await get_json(client, "/healthz") == {"ok": True}
    for _ in range(3):
        await get_json(client, "/search", q="rust")
    await get_json(client, "/search", status=400, q="rust", limit="0")
    await calc(client, {"expression": "1 + 1"})
    counters = client.app[COUNTERS]
    assert counters["search"] == 4
    assert counters["calculator"] == 1
    assert counters["healthz"] == 1
    assert counters["weather"] == 0


async def test_unknown_route_and_method_are_json(client: Client) -> None:
    body = await get_json(client, "/nope", status=404)
    assert "no such endpoint" in body["error"]
    async with client.get("/calculator") as resp:
        assert resp.status == 405
        assert "error" in await resp.json()


# --- tools.yaml stays in sync with the service --------------------------------


def _tools_yaml() -> str:
    return (resources.files("demo_tools") / "tools.yaml").read_text(encoding="utf-8")


def _enum_after(text: str, key: str) -> set[str]:
    """The inline ``enum: [...]`` of the first property named ``key``."""
    match = re.search(rf"\n\s+{key}:\n(?:\s+\w+: .*\n)*?\s+enum: \[(.*)\]", text)
    assert match is not None, key
    return {item.strip() for item in match.group(1).split(",")}


def test_tools_yaml_matches_the_service() -> None:
    text = _tools_yaml()
    names = re.findall(r"^  - name: (\S+)$", text, flags=re.MULTILINE)
    assert names == ["calculator", "convert_units", "weather", "search", "current_time"]
    urls = re.findall(r"^\s+url: (\S+)$", text, flags=re.MULTILINE)
    assert urls == [
        "http://127.0.0.1:8081/calculator",
        "http://127.0.0.1:8081/convert",
        "http://127.0.0.1:8081/weather/{city}",
        "http://127.0.0.1:8081/search",
        "http://127.0.0.1:8081/time",
    ]
    assert _enum_after(text, "from") == set(UNIT_NAMES)
    assert _enum_after(text, "to") == set(UNIT_NAMES)
    assert _enum_after(text, "tz") == set(ZONE_NAMES)
    weather = json.loads(resources.files("demo_tools").joinpath("data/weather.json").read_bytes())
    description = " ".join(text.split())
    for city in weather["cities"]:
        assert city["city"] in description


# --- CLI --------------------------------------------------------------------


def _start_cli(*args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "demo_tools", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from demo_tools"
    return proc.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_listening_line_and_exits_cleanly(sig: signal.Signals) -> None:
    with _start_cli("--host", "127.0.0.1", "--port", "0") as proc:
        try:
            line = _read_line(proc)
            match = re.fullmatch(r"demo-tools listening on http://127\.0\.0\.1:(\d+)\n", line)
            assert match, line
            port = int(match.group(1))
            assert port > 0
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert json.load(resp) == {"ok": True}
            proc.send_signal(sig)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_cli_reports_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with _start_cli("--port", str(port)) as proc:
            try:
                _, stderr = proc.communicate(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert proc.returncode == 1
    assert "cannot listen" in stderr
