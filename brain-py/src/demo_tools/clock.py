"""Current time in a fixed list of zone abbreviations.

Fixed offsets (no daylight-saving rules) keep the tool independent of the
system's tz database, which slim container images often lack.
"""

from __future__ import annotations

import datetime as dt

# abbreviation -> (offset in minutes, description)
ZONES: dict[str, tuple[int, str]] = {
    "UTC": (0, "Coordinated Universal Time"),
    "GMT": (0, "Greenwich Mean Time"),
    "WET": (0, "Western European Time"),
    "CET": (60, "Central European Time"),
    "CEST": (120, "Central European Summer Time"),
    "EET": (120, "Eastern European Time"),
    "MSK": (180, "Moscow Time"),
    "GST": (240, "Gulf Standard Time"),
    "IST": (330, "India Standard Time"),
    "ICT": (420, "Indochina Time"),
    "SGT": (480, "Singapore Time"),
    "HKT": (480, "Hong Kong Time"),
    "JST": (540, "Japan Standard Time"),
    "KST": (540, "Korea Standard Time"),
    "AEST": (600, "Australian Eastern Standard Time"),
    "NZST": (720, "New Zealand Standard Time"),
    "BRT": (-180, "Brasília Time"),
    "EST": (-300, "Eastern Standard Time (North America)"),
    "EDT": (-240, "Eastern Daylight Time (North America)"),
    "CST": (-360, "Central Standard Time (North America)"),
    "CDT": (-300, "Central Daylight Time (North America)"),
    "MST": (-420, "Mountain Standard Time (North America)"),
    "PST": (-480, "Pacific Standard Time (North America)"),
    "PDT": (-420, "Pacific Daylight Time (North America)"),
    "HST": (-600, "Hawaii Standard Time"),
}

ZONE_NAMES = list(ZONES)


class UnknownZoneError(ValueError):
    """The zone is not in :data:`ZONES`."""


def now_in(zone: str, now: dt.datetime | None = None) -> dict[str, str | int]:
    """The response body for ``zone`` (case-insensitive); ``now`` is for tests."""
    key = zone.strip().upper()
    if key not in ZONES:
        raise UnknownZoneError(f"unknown time zone {zone!r}; known: {', '.join(ZONE_NAMES)}")
    minutes, description = ZONES[key]
    tz = dt.timezone(dt.timedelta(minutes=minutes))
    local = (now or dt.datetime.now(dt.UTC)).astimezone(tz).replace(microsecond=0)
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return {
        "tz": key,
        "name": description,
        "utc_offset": f"{sign}{hours:02d}:{mins:02d}",
        "iso": local.isoformat(),
        "weekday": local.strftime("%A"),
        "unix": int(local.timestamp()),
    }
