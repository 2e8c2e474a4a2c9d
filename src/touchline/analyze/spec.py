"""Reading analysis specs: durations, dates, periods and the fields every analysis shares.

A spec is plain JSON. Every reader here either returns a typed value or raises
:class:`~touchline.errors.InvalidInput` naming the dotted field and the rule it broke,
so the CLI, the REST API and the Python API report bad input the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import InvalidInput

__all__ = [
    "PERIODS",
    "CommonSpec",
    "Spec",
    "local_ms",
    "opt_bool",
    "opt_int",
    "opt_str",
    "parse_common",
    "parse_date",
    "parse_duration",
    "period_bounds",
    "req_list",
    "req_mapping",
    "req_str",
]

Spec = Mapping[str, Any]

_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
PERIODS = ("hour", "day", "week", "month")


def parse_duration(value: Any, field_name: str) -> int:
    """``30s``, ``5m``, ``2h``, ``7d``, ``4w`` (or a number of seconds) to milliseconds."""
    if isinstance(value, bool):
        raise InvalidInput(field_name, "must be a duration such as 30s, 5m, 2h, 7d or 4w")
    if isinstance(value, int) and value > 0:
        return value * 1000
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m and int(m.group(1)) > 0:
            return int(m.group(1)) * _UNIT_MS[m.group(2)]
    raise InvalidInput(field_name, "must be a positive duration such as 30s, 5m, 2h, 7d or 4w")


def parse_date(value: Any, field_name: str) -> date:
    """An ISO date ``YYYY-MM-DD`` (a datetime's date part is refused: periods are whole days)."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise InvalidInput(field_name, "must be a date written YYYY-MM-DD")


def local_ms(day: date, tz: ZoneInfo) -> int:
    """Milliseconds of local midnight starting ``day`` in ``tz`` (DST-aware)."""
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def _add_period(d: date, period: str, n: int = 1) -> date:
    if period == "day":
        return d + timedelta(days=n)
    if period == "week":
        return d + timedelta(days=7 * n)
    months = d.year * 12 + (d.month - 1) + n
    return date(months // 12, months % 12 + 1, 1)


def _period_start(d: date, period: str) -> date:
    if period == "week":
        return d - timedelta(days=d.weekday())  # ISO weeks start on Monday
    if period == "month":
        return d.replace(day=1)
    return d


def period_bounds(
    first: date, last_exclusive: date, period: str, tz: ZoneInfo, *, before: int = 0,
    after: int = 0,
) -> tuple[list[date], list[int]]:
    """Calendar periods covering ``[first, last_exclusive)`` in ``tz``.

    Returns the period start dates and their UTC millisecond bounds (one more bound
    than periods). ``before``/``after`` add whole periods on either side. Hours are
    taken as absolute hours, since a local hour is ambiguous across a DST change.
    """
    if period == "hour":
        start = local_ms(first, tz) - before * 3_600_000
        end = local_ms(last_exclusive, tz) + after * 3_600_000
        bounds = list(range(start, end + 1, 3_600_000))
        return [first] * (len(bounds) - 1), bounds
    d = _add_period(_period_start(first, period), period, -before) if before else _period_start(
        first, period)
    starts: list[date] = []
    while d < last_exclusive:
        starts.append(d)
        d = _add_period(d, period)
    for _ in range(after):
        starts.append(d)
        d = _add_period(d, period)
    bounds = [local_ms(s, tz) for s in starts] + [local_ms(d, tz)]
    return starts, bounds


def req_mapping(spec: Any, field_name: str) -> Spec:
    if not isinstance(spec, Mapping):
        raise InvalidInput(field_name, "must be an object")
    return spec


def req_list(spec: Spec, key: str, prefix: str = "", *, min_len: int = 0) -> list[Any]:
    value = spec.get(key)
    if not isinstance(value, list):
        raise InvalidInput(prefix + key, "must be a list")
    if len(value) < min_len:
        raise InvalidInput(prefix + key, f"must hold at least {min_len} item(s)")
    return value


def req_str(spec: Spec, key: str, prefix: str = "") -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(prefix + key, "is required and must be a non-empty string")
    return value


def opt_str(spec: Spec, key: str, default: str | None, prefix: str = "",
            choices: Sequence[str] | None = None) -> str | None:
    value = spec.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(prefix + key, "must be a string")
    if choices is not None and value not in choices:
        raise InvalidInput(prefix + key, "must be one of " + ", ".join(choices))
    return value


def opt_int(spec: Spec, key: str, default: int, prefix: str = "", *, lo: int = 0,
            hi: int = 10_000) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(prefix + key, f"must be an integer from {lo} to {hi}")
    return value


def opt_bool(spec: Spec, key: str, default: bool, prefix: str = "") -> bool:
    value = spec.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(prefix + key, "must be true or false")
    return value


@dataclass(frozen=True)
class CommonSpec:
    """What every analysis shares: project, local date range, time zone, filters, breakdown."""

    project: str
    start: date
    end: date  # exclusive
    tz: ZoneInfo
    start_ms: int
    end_ms: int
    where: Any = None
    breakdown: Mapping[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tz_name(self) -> str:
        return self.tz.key


def parse_tz(value: Any, field_name: str = "time_zone") -> ZoneInfo:
    if not isinstance(value, str) or not value:
        raise InvalidInput(field_name, "must be an IANA time zone name such as Asia/Shanghai")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(field_name, "is not a known IANA time zone") from None


def parse_common(spec: Any, default_tz: str) -> CommonSpec:
    """Read ``project``, ``from``, ``to`` (exclusive), ``time_zone``, ``where``, ``breakdown``."""
    spec = req_mapping(spec, "spec")
    project = opt_str(spec, "project", "default") or "default"
    start = parse_date(spec.get("from"), "from")
    end = parse_date(spec.get("to"), "to")
    if end <= start:
        raise InvalidInput("to", "must be after from (the range is [from, to))")
    tz = parse_tz(spec.get("time_zone", default_tz))
    breakdown = spec.get("breakdown")
    if breakdown is not None:
        breakdown = req_mapping(breakdown, "breakdown")
    return CommonSpec(
        project=project, start=start, end=end, tz=tz,
        start_ms=local_ms(start, tz), end_ms=local_ms(end, tz),
        where=spec.get("where"), breakdown=breakdown,
    )
