"""Unit conversion between common units of one dimension.

Linear units are stored as a factor to the dimension's base unit (metre,
kilogram, litre, metre per second); temperature is affine and converted via
kelvin, which also lets us refuse values below absolute zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SIGNIFICANT_DIGITS = 6
"""Results are rounded so that float noise (``0.30000000000000004``) never reaches an LLM."""


class ConversionError(ValueError):
    """The conversion is impossible (unknown or incompatible units); the message says why."""


@dataclass(frozen=True, slots=True)
class Unit:
    """A unit: its dimension and how to reach that dimension's base unit."""

    dimension: str
    factor: float = 1.0
    """Base units per one of this unit (linear units)."""
    offset: float = 0.0
    """Added after scaling (temperature: ``K = C * 1 + 273.15``)."""


_INCH_M = 0.0254
_US_GALLON_L = 3.785411784

UNITS: dict[str, Unit] = {
    # length, base: metre
    "m": Unit("length"),
    "km": Unit("length", 1000.0),
    "cm": Unit("length", 0.01),
    "mm": Unit("length", 0.001),
    "mi": Unit("length", 1609.344),
    "yd": Unit("length", 0.9144),
    "ft": Unit("length", 12 * _INCH_M),
    "in": Unit("length", _INCH_M),
    # mass, base: kilogram
    "kg": Unit("mass"),
    "g": Unit("mass", 0.001),
    "lb": Unit("mass", 0.45359237),
    "oz": Unit("mass", 0.45359237 / 16),
    # temperature, base: kelvin
    "k": Unit("temperature"),
    "c": Unit("temperature", 1.0, 273.15),
    "f": Unit("temperature", 5 / 9, 273.15 - 32 * 5 / 9),
    # volume, base: litre (US customary gallon and cup)
    "l": Unit("volume"),
    "ml": Unit("volume", 0.001),
    "gal": Unit("volume", _US_GALLON_L),
    "cup": Unit("volume", _US_GALLON_L / 16),
    # speed, base: metre per second
    "mps": Unit("speed"),
    "kph": Unit("speed", 1000 / 3600),
    "mph": Unit("speed", 1609.344 / 3600),
}

UNIT_NAMES = list(UNITS)
"""Every unit accepted, grouped by dimension (the order of :data:`UNITS`)."""


def lookup(name: str) -> tuple[str, Unit]:
    """The canonical (lower-case) name of a unit and the unit, or :class:`ConversionError`."""
    key = name.strip().lower()
    unit = UNITS.get(key)
    if unit is None:
        raise ConversionError(f"unknown unit {name!r}; known units: {', '.join(UNIT_NAMES)}")
    return key, unit


def convert(value: float, source: str, target: str) -> float:
    """Converts ``value`` from unit ``source`` to unit ``target`` (names as in :data:`UNITS`)."""
    source_name, source_unit = lookup(source)
    target_name, target_unit = lookup(target)
    if source_unit.dimension != target_unit.dimension:
        raise ConversionError(
            f"cannot convert {source_unit.dimension} ({source_name}) "
            f"to {target_unit.dimension} ({target_name})"
        )
    base = value * source_unit.factor + source_unit.offset
    if source_unit.dimension == "temperature":
        if base < -1e-9:
            raise ConversionError(f"{value} {source_name} is below absolute zero")
        if base < 1e-9:  # float noise around absolute zero
            base = 0.0
    result = (base - target_unit.offset) / target_unit.factor
    if not math.isfinite(result):
        raise ConversionError("result is out of range")
    return round_significant(result)


def round_significant(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``x`` rounded to ``digits`` significant digits."""
    return float(f"{x:.{digits}g}")
