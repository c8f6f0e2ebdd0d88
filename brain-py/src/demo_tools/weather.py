"""Current conditions and a 3-day forecast from a bundled snapshot.

The demo must run without network access, so the data is a fixture; forecast
dates are computed from today so that responses still look current.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable
from typing import Any, Literal

Units = Literal["c", "f"]
UNITS: tuple[Units, ...] = ("c", "f")


def parse_units(text: str) -> Units:
    """``"c"`` or ``"f"`` (case-insensitive), else :class:`ValueError`."""
    value = text.strip().lower()
    if value == "c":
        return "c"
    if value == "f":
        return "f"
    raise ValueError(f"units must be one of {', '.join(UNITS)}, got {text!r}")


_SEPARATORS = re.compile(r"[\s_\-]+")


def normalize_city(name: str) -> str:
    """Folds case, accents and separators: "sao-paulo" and "São Paulo" are the same city."""
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SEPARATORS.sub(" ", plain).strip()


class WeatherStore:
    """The fixture, indexed by normalized city name and alias."""

    def __init__(self, fixture: dict[str, Any]) -> None:
        self._cities: list[dict[str, Any]] = list(fixture["cities"])
        self._index: dict[str, dict[str, Any]] = {}
        for city in self._cities:
            for name in [city["city"], *city.get("aliases", [])]:
                self._index[normalize_city(name)] = city

    @property
    def known(self) -> list[str]:
        """Every city name, sorted, for "unknown city" errors."""
        return sorted((city["city"] for city in self._cities), key=normalize_city)

    def lookup(self, name: str) -> dict[str, Any] | None:
        """The fixture entry for ``name`` (case-, accent- and separator-insensitive)."""
        return self._index.get(normalize_city(name))

    def report(self, name: str, units: Units, today: dt.date) -> dict[str, Any] | None:
        """The response body for ``name`` in ``units``, or ``None`` for an unknown city."""
        city = self.lookup(name)
        if city is None:
            return None
        temp: Callable[[float], float]
        speed: Callable[[float], float]
        if units == "c":
            temp, speed = _same, _same
        else:
            temp, speed = _c_to_f, _kph_to_mph
        return {
            "city": city["city"],
            "country": city["country"],
            "units": {
                "temperature": "°C" if units == "c" else "°F",
                "wind_speed": "km/h" if units == "c" else "mph",
            },
            "current": {
                "temperature": temp(city["temp_c"]),
                "humidity": city["humidity"],
                "wind_speed": speed(city["wind_kph"]),
                "conditions": city["conditions"],
            },
            "forecast": [
                {
                    "date": (today + dt.timedelta(days=offset)).isoformat(),
                    "high": temp(day["high_c"]),
                    "low": temp(day["low_c"]),
                    "conditions": day["conditions"],
                    "precip_chance": day["precip_chance"],
                }
                for offset, day in enumerate(city["forecast"], start=1)
            ],
        }


def _same(value: float) -> float:
    return round(float(value), 1)


def _c_to_f(celsius: float) -> float:
    return round(celsius * 9 / 5 + 32, 1)


def _kph_to_mph(kph: float) -> float:
    return round(kph / 1.609344, 1)
