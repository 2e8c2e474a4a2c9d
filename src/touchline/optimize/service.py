"""The report over an open runtime, and the parsing the CLI and REST share.

Python API::

    from touchline.optimize import ReportRequest, report_for
    report = report_for(runtime, "cancelled_order_rescue", ReportRequest(goal="paid"))
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import InvalidInput
from ..runtime import Runtime
from .report import ReportRequest, journey_report

__all__ = ["parse_baselines", "parse_costs", "parse_moment", "report_for", "request_from"]


def report_for(runtime: Runtime, journey_id: str, req: ReportRequest,
               project: str = "default") -> dict[str, Any]:
    """The Optimize report of one journey (see :func:`journey_report`)."""
    with runtime.state.transaction(read_only=True) as tx:
        return journey_report(tx, runtime.events, project, journey_id, req)


def parse_costs(text: str | None, field: str = "cost") -> dict[str, float]:
    """``webhook=0.01,sms=0.05`` (``*=0.02`` for every other channel) to a mapping."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        channel, sep, value = part.partition("=")
        try:
            cost = float(value)
        except ValueError:
            cost = -1.0
        if not sep or not channel.strip() or not cost >= 0:
            raise InvalidInput(field, f"{part.strip()!r}: expected channel=cost, cost >= 0")
        out[channel.strip()] = cost
    return out


def parse_baselines(text: str | None) -> dict[str, str]:
    """``node=variant,...``: the variant each content experiment is compared with."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        node, sep, variant = part.partition("=")
        if not sep or not node.strip() or not variant.strip():
            raise InvalidInput("baseline", f"{part.strip()!r}: expected node=variant")
        out[node.strip()] = variant.strip()
    return out


def parse_moment(text: str | None, field: str, zone: str, *, end: bool = False) -> int | None:
    """An ISO date or time to epoch ms. A time without an offset is read in ``zone``
    (the project's); a bare date means its midnight, or with ``end`` the next one, so
    ``--to 2024-05-31`` includes that whole day."""
    if text is None or not text.strip():
        return None
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput("time_zone", f"unknown time zone {zone!r}") from None
    raw = text.strip()
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            moment = datetime.combine(day + timedelta(days=1 if end else 0), time(), tz)
        else:
            moment = datetime.fromisoformat(raw)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
    except ValueError:
        raise InvalidInput(field, f"{raw!r} is not an ISO date or time") from None
    return int(moment.timestamp() * 1000)


def _zone(runtime: Runtime, project: str) -> str:
    found = runtime.projects.by_name(project)
    zone = getattr(found, "time_zone", None) if found is not None else None
    return str(zone or runtime.settings.time_zone)


def request_from(runtime: Runtime, project: str, *, goal: str | None,
                 value_property: str | None, cost: str | None, start: str | None,
                 end: str | None, min_arm_users: int | None,
                 baseline: str | None) -> ReportRequest:
    """A request from the CLI's or the query string's text values."""
    zone = _zone(runtime, project)
    kwargs: dict[str, Any] = {}
    if min_arm_users is not None:
        kwargs["min_arm_users"] = min_arm_users
    if cost is None:
        # The deployment's price list (the `message_costs` setting) when the request
        # names none.
        cost = str(runtime.settings.message_costs or "")
    return ReportRequest(
        goal=goal or None, value_property=value_property or None,
        costs=parse_costs(cost), start_ms=parse_moment(start, "from", zone),
        end_ms=parse_moment(end, "to", zone, end=True), baselines=parse_baselines(baseline),
        **kwargs)
