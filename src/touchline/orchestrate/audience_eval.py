"""The real-time evaluator: audience conditions over one user's rows, in Python.

The real-time path reads the profiles and events of the users an ingest batch
touched (one small query) and decides their memberships and next boundaries here,
instead of running one SQL query per segment: a few users' rows fit in memory and
plain Python beats any query's planning. The semantics are exactly those of
:mod:`.audience_sql` (which the batch path uses); the tests run both on random
data and definitions and require the same answers.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlglot import exp

from .audience_model import All, AnyOf, Bucket, FirstLast, Not, Performed, PropTest, Trait
from .audience_sql import Expanded, UserSet, bucket_of, walk_expanded

__all__ = [
    "UserRows",
    "is_member",
    "load_users_sql",
    "next_boundary",
    "prop_matches",
    "rows_by_user",
]


@dataclass(slots=True)
class UserRows:
    """One user's profile (None: no such profile) and events by name: (time_ms, props)."""

    profile: dict[str, Any] | None
    events: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)


_USERS = "tl_aud_users"


@functools.lru_cache(maxsize=8)
def _users_templates(dialect: str) -> tuple[str, str]:
    where = exp.In(this=exp.column("user_id"), expressions=[exp.Placeholder(this=_USERS)])
    profiles = exp.select(
        exp.column("user_id"), exp.cast(exp.column("properties"), "VARCHAR"),
    ).from_("profiles").where(where.copy())
    events = exp.select(
        exp.column("user_id"), exp.column("event"),
        exp.Anonymous(this="epoch_ms", expressions=[exp.column("time")]),
        exp.cast(exp.column("properties"), "VARCHAR"),
    ).from_("events").where(where.copy())
    return profiles.sql(dialect), events.sql(dialect)


def load_users_sql(users: Sequence[int], dialect: str = "duckdb") -> tuple[str, str]:
    """Two queries for the rows of ``users``: ``(user_id, properties)`` of their
    profiles and ``(user_id, event, time_ms, properties)`` of their events.

    Kept as two plain scans on purpose: a UNION, or a filter on the event name,
    stops DuckDB from pruning by user and costs several times as much; the event
    names are filtered in Python instead. The statements are generated once; the id
    list (integers, formatted by ``int``) is spliced in, since rendering thousands
    of literals through sqlglot costs more than the query itself.
    """
    ids = ", ".join(str(int(u)) for u in sorted(set(users))) or "NULL"
    token = exp.Placeholder(this=_USERS).sql(dialect)
    profiles, events = _users_templates(dialect)
    return profiles.replace(token, ids), events.replace(token, ids)


def _props(text: Any) -> dict[str, Any]:
    data = orjson.loads(text) if text else {}
    return data if isinstance(data, dict) else {}


def rows_by_user(profiles: Sequence[Sequence[Any]], events: Sequence[Sequence[Any]],
                 event_names: Collection[str] | None = None) -> dict[int, UserRows]:
    """Group the rows of the :func:`load_users_sql` queries by user, keeping only
    ``event_names`` (all events when None)."""
    out: dict[int, UserRows] = {}
    for user, props in profiles:
        out[int(user)] = UserRows(_props(props))
    for user, event, t, props in events:
        if event_names is not None and event not in event_names:
            continue
        entry = out.setdefault(int(user), UserRows(None))
        entry.events.setdefault(event, []).append((int(t), _props(props)))
    return out


def _json_text(value: Any) -> str:
    # What json_extract_string gives for an array element: strings bare, the rest
    # as their JSON text.
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _compare(props: Mapping[str, Any], prop: str, op: str, value: Any) -> bool:
    if prop not in props:
        return False
    v = props[prop]
    if isinstance(value, bool):
        if not isinstance(v, bool):
            return False
        left, right = ("true" if v else "false"), ("true" if value else "false")
        return _apply(op, left, right)
    if isinstance(value, str):
        return isinstance(v, str) and _apply(op, v, value)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return _apply(op, float(v), float(value))


def _apply(op: str, left: Any, right: Any) -> bool:
    if op == "=":
        return bool(left == right)
    if op == ">":
        return bool(left > right)
    if op == ">=":
        return bool(left >= right)
    if op == "<":
        return bool(left < right)
    return bool(left <= right)


_NEGATIONS = {"!=": "=", "not_in": "in", "not_contains": "contains", "not_set": "is_set"}


def prop_matches(props: Mapping[str, Any], t: PropTest) -> bool:
    """A property test, as :func:`.audience_sql.prop_test` decides it."""
    if t.op in _NEGATIONS:
        return not prop_matches(props, PropTest(t.prop, _NEGATIONS[t.op], t.value))
    if t.op == "is_set":
        return props.get(t.prop) is not None
    if t.op == "in":
        assert isinstance(t.value, tuple)
        return any(_compare(props, t.prop, "=", v) for v in t.value)
    if t.op == "contains":
        v = props.get(t.prop)
        if isinstance(v, str):
            return str(t.value) in v
        if isinstance(v, list):
            return any(x is not None and _json_text(x) == t.value for x in v)
        return False
    return _compare(props, t.prop, t.op, t.value)


def _matching(leaf: Performed | FirstLast, rows: UserRows) -> list[tuple[int, dict[str, Any]]]:
    events = rows.events.get(leaf.event, [])
    if not leaf.where:
        return events
    return [e for e in events if all(prop_matches(e[1], t) for t in leaf.where)]


def _number(props: Mapping[str, Any], prop: str) -> float | None:
    v = props.get(prop)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _performed(leaf: Performed, rows: UserRows, at: int) -> bool:
    w = leaf.window
    lo = None if w.last_ms is None else at - w.last_ms
    times = [
        e for e in _matching(leaf, rows)
        if e[0] <= at and (lo is None or e[0] > lo)
        and (w.start_ms is None or e[0] >= w.start_ms) and (w.end_ms is None or e[0] < w.end_ms)
    ]
    value: float | None
    if leaf.aggregate == "count":
        value = float(len(times))
    else:
        assert leaf.prop is not None
        nums = [n for n in (_number(p, leaf.prop) for _, p in times) if n is not None]
        if leaf.aggregate == "sum":
            value = float(sum(nums))
        elif not nums:
            value = None
        elif leaf.aggregate == "avg":
            value = sum(nums) / len(nums)
        else:
            value = min(nums) if leaf.aggregate == "min" else max(nums)
    if value is None:
        return False
    if leaf.op == "between":
        return leaf.value[0] <= value <= leaf.value[1]
    if leaf.op == "!=":
        return value != leaf.value[0]
    return _apply(leaf.op, value, leaf.value[0])


def _first_last(leaf: FirstLast, rows: UserRows, at: int) -> bool:
    times = [t for t, _ in _matching(leaf, rows) if t <= at]
    if not times:
        return False
    t = min(times) if leaf.which == "first" else max(times)
    if leaf.when == "within":
        return t > at - leaf.ms
    if leaf.when == "more_than":
        return t <= at - leaf.ms
    if leaf.when == "before":
        return t < leaf.ms
    return t >= leaf.ms


def is_member(cond: Expanded, user_id: int, rows: UserRows, at_ms: int) -> bool:
    """Whether the user is in ``cond`` as of ``at_ms`` (no profile: never)."""
    if rows.profile is None:
        return False
    return _holds(cond, user_id, rows, at_ms)


def _holds(cond: Expanded, user_id: int, rows: UserRows, at: int) -> bool:
    if isinstance(cond, All):
        return all(_holds(c, user_id, rows, at) for c in cond.items)
    if isinstance(cond, AnyOf):
        return any(_holds(c, user_id, rows, at) for c in cond.items)
    if isinstance(cond, Not):
        return not _holds(cond.item, user_id, rows, at)
    if isinstance(cond, Trait):
        assert rows.profile is not None
        return prop_matches(rows.profile, cond.test)
    if isinstance(cond, Performed):
        return _performed(cond, rows, at)
    if isinstance(cond, FirstLast):
        return _first_last(cond, rows, at)
    if isinstance(cond, Bucket):
        return cond.start <= bucket_of(user_id, cond.salt) < cond.end
    if isinstance(cond, UserSet):
        return user_id in cond.users
    raise TypeError(f"unresolved condition {cond!r}")


def next_boundary(cond: Expanded, rows: UserRows, at_ms: int) -> int | None:
    """The next time after ``at_ms`` the membership can change with no new event;
    the same candidates as :func:`.audience_sql.boundary_sql`."""
    best: int | None = None
    for node in walk_expanded(cond):
        if not isinstance(node, Performed | FirstLast):
            continue
        if isinstance(node, Performed):
            duration = node.window.last_ms
        else:
            duration = node.ms if node.when in ("within", "more_than") else None
        for t, _ in _matching(node, rows):
            for c in (t, t + duration) if duration is not None else (t,):
                if c > at_ms and (best is None or c < best):
                    best = c
    return best
