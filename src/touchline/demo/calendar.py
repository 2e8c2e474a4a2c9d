"""The demo's calendar: local days in Asia/Shanghai, day types, school holidays, season.

The window is the ``days`` local calendar days that end with the day holding
``end_ms - 1``; events at or after ``end_ms`` are never emitted.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

__all__ = [
    "DAY_MS",
    "FRIDAY",
    "HOLIDAY",
    "TIME_ZONE",
    "WEEKDAY",
    "WEEKEND",
    "DemoCalendar",
    "build_calendar",
]

TIME_ZONE = "Asia/Shanghai"
DAY_MS = 86_400_000
MINUTE_MS = 60_000

# Day types index the behaviour tables. A public holiday behaves like a weekend.
WEEKDAY, FRIDAY, WEEKEND, HOLIDAY = 0, 1, 2, 3

# (month, first day, last day) of public holidays, and of school holidays. Fixed
# approximate dates: the demo needs the pattern, not next year's official calendar.
_PUBLIC_HOLIDAYS = ((1, 1, 1), (5, 1, 5), (10, 1, 7))
_SCHOOL_HOLIDAYS = ((1, 15, 31), (2, 1, 20), (7, 1, 31), (8, 1, 31), (10, 1, 7))


def _in_ranges(d: date, ranges: tuple[tuple[int, int, int], ...]) -> bool:
    return any(d.month == m and lo <= d.day <= hi for m, lo, hi in ranges)


@dataclass(frozen=True, slots=True)
class DemoCalendar:
    """Per local day of the window: its bounds, type, school holiday flag and season."""

    dates: tuple[date, ...]
    starts_ms: tuple[int, ...]  # local midnight of each day, plus one past the last
    day_type: npt.NDArray[np.int8]
    school_holiday: npt.NDArray[np.bool_]
    season: npt.NDArray[np.float64]
    end_ms: int

    @property
    def days(self) -> int:
        return len(self.dates)

    def day_of(self, ms: int) -> int:
        """The index of the local day holding ``ms`` (``days`` when past the end)."""
        return max(bisect_right(self.starts_ms, ms) - 1, 0)

    def iso(self, ms: int) -> str:
        """The local ISO date of a moment (profile dates are written this way)."""
        return datetime.fromtimestamp(ms / 1000, ZoneInfo(TIME_ZONE)).date().isoformat()


def build_calendar(days: int, end_ms: int) -> DemoCalendar:
    tz = ZoneInfo(TIME_ZONE)
    last = datetime.fromtimestamp((end_ms - 1) / 1000, tz).date()
    dates = tuple(last - timedelta(days=days - 1 - i) for i in range(days))
    starts = [int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() * 1000)
              for d in (*dates, last + timedelta(days=1))]
    day_type = np.empty(days, dtype=np.int8)
    school = np.zeros(days, dtype=np.bool_)
    season = np.empty(days, dtype=np.float64)
    for i, d in enumerate(dates):
        wd = d.weekday()
        if _in_ranges(d, _PUBLIC_HOLIDAYS):
            day_type[i] = HOLIDAY
        elif wd >= 5:
            day_type[i] = WEEKEND
        elif wd == 4:
            day_type[i] = FRIDAY
        else:
            day_type[i] = WEEKDAY
        school[i] = _in_ranges(d, _SCHOOL_HOLIDAYS)
        # A slow upward trend (the brand is growing) with a weather-like swell, so
        # trend charts have something to show besides the weekly rhythm.
        season[i] = (0.92 + 0.16 * i / max(days - 1, 1)) * (
            1.0 + 0.08 * math.sin(2 * math.pi * i / 37.0))
    return DemoCalendar(dates, tuple(starts), day_type, school, season, end_ms)
