"""The demo tool service: a few real tools behind plain JSON-over-HTTP endpoints.

It stands in for the upstream services a tandem sidecar calls. Every error is
a JSON object ``{"error": ...}`` with a 4xx status, so that the sidecar can
hand it to the agent (and the LLM behind it) as something to act on.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from . import calculator, clock, units, weather
from .search import Bm25Index, load_corpus

log = logging.getLogger(__name__)

COUNTERS: web.AppKey[Counter[str]] = web.AppKey("counters", Counter)
"""Requests per endpoint (route name), errors included; handy for tests and demos."""

SEARCH_INDEX: web.AppKey[Bm25Index] = web.AppKey("search_index", Bm25Index)
WEATHER: web.AppKey[weather.WeatherStore] = web.AppKey("weather", weather.WeatherStore)

MAX_BODY_BYTES = 64 * 1024
MAX_QUERY_CHARS = 200
MAX_SEARCH_LIMIT = 10
DEFAULT_SEARCH_LIMIT = 3

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ToolError(Exception):
    """A request the tool cannot serve; becomes ``{"error": message, **extra}``."""

    def __init__(self, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.extra = extra


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response serialized with orjson (``web.json_response`` wants ``str``)."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


@web.middleware
async def _errors_and_counts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts each request by route and turns every failure into a JSON error body."""
    route = request.match_info.route.name
    if route is not None:
        request.app[COUNTERS][route] += 1
    try:
        return await handler(request)
    except ToolError as exc:
        return json_response({"error": exc.message, **exc.extra}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.status == 413 and exc.text else exc.reason.lower()
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        return json_response({"error": message}, status=exc.status)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return json_response({"error": "internal error"}, status=500)


def _param(request: web.Request, name: str, default: str | None = None) -> str:
    value = request.query.get(name, default)
    if value is None:
        raise ToolError(f"missing query parameter {name!r}")
    return value


async def calculator_handler(request: web.Request) -> web.Response:
    """``POST /calculator`` ``{"expression": "..."}``."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ToolError('body must be JSON: {"expression": "..."}') from None
    if not isinstance(body, dict) or "expression" not in body:
        raise ToolError('body must be a JSON object with "expression"')
    expression = body["expression"]
    if not isinstance(expression, str):
        raise ToolError('"expression" must be a string')
    try:
        value = calculator.evaluate(expression)
    except calculator.CalculatorError as exc:
        raise ToolError(str(exc)) from None
    return json_response({"expression": expression, "value": value})


async def convert_handler(request: web.Request) -> web.Response:
    """``GET /convert?value=10&from=km&to=mi``."""
    raw = _param(request, "value").strip()
    try:
        value: int | float = int(raw)
    except ValueError:
        try:
            value = float(raw)
        except ValueError:
            raise ToolError(f"value must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ToolError("value must be a finite number")
    try:
        source, _ = units.lookup(_param(request, "from"))
        target, _ = units.lookup(_param(request, "to"))
        result = units.convert(value, source, target)
    except units.ConversionError as exc:
        raise ToolError(str(exc)) from None
    return json_response(
        {"value": value, "from": source, "to": target, "result": result, "unit": target}
    )


async def weather_handler(request: web.Request) -> web.Response:
    """``GET /weather/{city}?units=c|f``."""
    try:
        requested = weather.parse_units(_param(request, "units", "c"))
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    store = request.app[WEATHER]
    city = request.match_info["city"]
    report = store.report(city, requested, dt.datetime.now(dt.UTC).date())
    if report is None:
        raise ToolError(f"unknown city {city!r}", status=404, known=store.known)
    return json_response(report)


async def search_handler(request: web.Request) -> web.Response:
    """``GET /search?q=...&limit=3``."""
    query = _param(request, "q").strip()
    if not query:
        raise ToolError("q must not be empty")
    if len(query) > MAX_QUERY_CHARS:
        raise ToolError(f"q is longer than {MAX_QUERY_CHARS} characters")
    raw_limit = _param(request, "limit", str(DEFAULT_SEARCH_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        raise ToolError(f"limit must be an integer, got {raw_limit!r}") from None
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise ToolError(f"limit must be between 1 and {MAX_SEARCH_LIMIT}, got {limit}")
    hits = request.app[SEARCH_INDEX].search(query, limit)
    return json_response(
        {
            "query": query,
            "results": [
                {"id": h.id, "title": h.title, "snippet": h.snippet, "score": h.score} for h in hits
            ],
        }
    )


async def time_handler(request: web.Request) -> web.Response:
    """``GET /time?tz=UTC``."""
    try:
        return json_response(clock.now_in(_param(request, "tz", "UTC")))
    except clock.UnknownZoneError as exc:
        raise ToolError(str(exc), known=clock.ZONE_NAMES) from None


async def healthz_handler(request: web.Request) -> web.Response:
    """``GET /healthz``: liveness for the demo runner."""
    return json_response({"ok": True})


def _read_data(name: str) -> bytes:
    return (resources.files("demo_tools") / "data" / name).read_bytes()


def create_app() -> web.Application:
    """Builds the app; the search index and weather fixture are loaded here, once."""
    app = web.Application(middlewares=[_errors_and_counts], client_max_size=MAX_BODY_BYTES)
    app[COUNTERS] = Counter()
    app[SEARCH_INDEX] = Bm25Index(load_corpus(_read_data("corpus.jsonl")))
    app[WEATHER] = weather.WeatherStore(orjson.loads(_read_data("weather.json")))
    app.router.add_post("/calculator", calculator_handler, name="calculator")
    app.router.add_get("/convert", convert_handler, name="convert")
    app.router.add_get("/weather/{city}", weather_handler, name="weather")
    app.router.add_get("/search", search_handler, name="search")
    app.router.add_get("/time", time_handler, name="time")
    app.router.add_get("/healthz", healthz_handler, name="healthz")
    return app
