"""When timers fall due (delays, wait timeouts) and when schedules fire.

Pure functions of (node, profile, entry data, now); the engine stores the result in the
``due_ms`` column of the user's journey state, and the scheduler loop claims due rows
from that index. Local times use the profile's ``$timezone`` (falling back to the
project's zone), so "Friday 10:00" is each user's own Friday morning.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .model import (
    WEEKDAYS,
    DelayNode,
    Journey,
    ScheduleEntry,
    UntilProperty,
    UntilTime,
    WaitNode,
    parse_duration,
)

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["delay_due_ms", "next_cron_ms", "property_due_ms", "run_schedules", "user_zone",
           "wait_due_ms", "weekday_time_due_ms"]


def user_zone(profile: dict[str, Any] | None, default_zone: str) -> ZoneInfo:
    """The user's own time zone, or ``default_zone`` when absent or unknown."""
    name = (profile or {}).get("$timezone") or default_zone
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default_zone)


def weekday_time_due_ms(spec: UntilTime, zone: ZoneInfo, now_ms: int) -> int:
    """The first moment strictly after ``now_ms`` that is ``spec.time`` on an allowed day."""
    hh, mm = (int(x) for x in spec.time.split(":"))
    allowed = {WEEKDAYS.index(d) for d in spec.weekdays}
    local = datetime.fromtimestamp(now_ms / 1000, tz=zone)
    for days in range(8):
        day = (local + timedelta(days=days)).date()
        if day.weekday() not in allowed:
            continue
        # Building from the date keeps DST right: 10:00 stays 10:00 local.
        candidate = datetime(day.year, day.month, day.day, hh, mm, tzinfo=zone)
        ms = int(candidate.timestamp() * 1000)
        if ms > now_ms:
            return ms
    raise AssertionError("a week always holds an allowed day")  # pragma: no cover


def _as_datetime(value: Any, zone: ZoneInfo) -> datetime | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        # Numbers are epoch milliseconds, as event times are.
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        # A bare date means its midnight in the user's zone.
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=zone)
    return None


def property_due_ms(
    spec: UntilProperty, profile: dict[str, Any] | None, event: dict[str, Any] | None,
    zone: ZoneInfo,
) -> int | None:
    """The property's date plus the offset; None when the property is missing or bad.

    The property is looked up on the profile first, then on the entry event.
    """
    raw = (profile or {}).get(spec.property)
    if raw is None:
        raw = (event or {}).get(spec.property)
    moment = _as_datetime(raw, zone)
    if moment is None:
        return None
    return int(moment.timestamp() * 1000) + parse_duration(spec.offset)


def delay_due_ms(
    node: DelayNode, now_ms: int, profile: dict[str, Any] | None,
    event: dict[str, Any] | None, default_zone: str,
) -> int | None:
    """When a delay ends. A date already past ends it at once; a missing date gives None."""
    if node.duration is not None:
        return now_ms + parse_duration(node.duration)
    if node.until_time is not None:
        zone = (user_zone(profile, default_zone) if node.until_time.time_zone == "user"
                else ZoneInfo(node.until_time.time_zone))
        return weekday_time_due_ms(node.until_time, zone, now_ms)
    assert node.until_property is not None
    due = property_due_ms(node.until_property, profile, event,
                          user_zone(profile, default_zone))
    return None if due is None else max(due, now_ms)


def wait_due_ms(node: WaitNode, now_ms: int) -> int:
    return now_ms + parse_duration(node.timeout)


def next_cron_ms(expr: str, after_ms: int, zone: ZoneInfo) -> int:
    """The first firing of ``expr`` (read in ``zone``) strictly after ``after_ms``."""
    start = datetime.fromtimestamp(after_ms / 1000, tz=zone)
    nxt: datetime = croniter(expr, start).get_next(datetime)
    return int(nxt.timestamp() * 1000)


def run_schedules(engine: Engine) -> int:
    """Fire the schedule entries whose time has come; returns the users entered.

    A cursor per (journey, version, zone) remembers the last firing, in the state
    store, so every firing enters its users once even across restarts.
    """
    from .segments import member_ids

    now = engine.clock.now_ms()
    fired: list[tuple[Journey, list[int], str]] = []
    with engine.store.transaction() as tx:
        engine.book.refresh(tx)
        for (project, jid), (version, status) in engine.book.current.items():
            j = engine.book.get(project, jid, version)
            if status == "active" and isinstance(j.entry, ScheduleEntry):
                fired += _due(engine, tx, j, version, now, member_ids(tx, project,
                                                                       j.entry.segment))
    return sum(engine.enter_users(j.project, j.id, users, key) for j, users, key in fired)


def _zones(engine: Engine, tx: Any, j: Journey, members: list[int]) -> dict[str, list[int]]:
    """Members grouped by the zone their schedule is read in."""
    entry = j.entry
    assert isinstance(entry, ScheduleEntry)
    if not (entry.user_time_zone and engine.profiles is not None and members):
        return {engine.default_zone: members}
    groups: dict[str, list[int]] = {}
    found: dict[int, dict[str, Any]] = {}
    for i in range(0, len(members), 500):
        found.update(engine.profiles(tx, j.project, members[i:i + 500]))
    for uid in members:
        zone = user_zone(found.get(uid), engine.default_zone)
        groups.setdefault(str(zone.key), []).append(uid)
    return groups


def _due(engine: Engine, tx: Any, j: Journey, version: int, now: int,
         member_set: set[int]) -> list[tuple[Journey, list[int], str]]:
    from .storage import cursor_get, cursor_set

    entry = j.entry
    assert isinstance(entry, ScheduleEntry)
    out: list[tuple[Journey, list[int], str]] = []
    for zone_name, users in _zones(engine, tx, j, sorted(member_set)).items():
        cursor = f"schedule:{j.project}:{j.id}:{version}:{zone_name}"
        last = cursor_get(tx, cursor)
        if entry.at is not None:
            at_ms = int(entry.at.timestamp() * 1000)
            if last == 0 and at_ms <= now:
                cursor_set(tx, cursor, at_ms)
                out.append((j, users, f"s:{at_ms}"))
            continue
        assert entry.cron is not None
        if last == 0:
            cursor_set(tx, cursor, now)  # the first firing is the next one, not a past one
            continue
        fire = next_cron_ms(entry.cron, last, user_zone({"$timezone": zone_name},
                                                        engine.default_zone))
        if fire <= now:
            cursor_set(tx, cursor, fire)
            out.append((j, users, f"s:{fire}"))
    return out
