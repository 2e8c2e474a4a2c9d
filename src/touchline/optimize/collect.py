"""What a report reads: a journey's entries, arms, goals and messages from the state
store, and the money of the goal events from the event store.

Everything is keyed by entry, ``(user_id, entry_key)``, the unit the engine records;
the report groups entries into users.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ..orchestrate.model import Goal, Journey, parse_duration, where_holds
from ..orchestrate.storage import Tx, load_version

__all__ = ["EntryKey", "JourneyData", "goal_values", "read_journey"]

EntryKey = tuple[int, str]


@dataclass
class JourneyData:
    """One journey's recorded facts, restricted to the entries of the date range."""

    versions: dict[int, Journey]
    # entry -> (version, entered_ms, raw state data, as stored)
    entries: dict[EntryKey, tuple[int, int, str]] = field(default_factory=dict)
    # split node -> entry -> arm
    split_arms: dict[str, dict[EntryKey, str]] = field(default_factory=dict)
    # message node -> entry -> (variant, first message written at)
    content_arms: dict[str, dict[EntryKey, tuple[str, int]]] = field(default_factory=dict)
    # entry -> goal -> converted at (the goal event's time)
    goals: dict[EntryKey, dict[str, int]] = field(default_factory=dict)
    # entry -> (node, channel) -> messages sent
    sent: dict[EntryKey, dict[tuple[str, str], int]] = field(default_factory=dict)


def _range_sql(start_ms: int | None, end_ms: int | None) -> tuple[str, list[Any]]:
    sql, params = "", []
    if start_ms is not None:
        sql += " AND s.entered_ms >= ?"
        params.append(int(start_ms))
    if end_ms is not None:
        sql += " AND s.entered_ms < ?"
        params.append(int(end_ms))
    return sql, params


def read_journey(tx: Tx, project: str, journey_id: str, *, start_ms: int | None,
                 end_ms: int | None) -> JourneyData:
    """Entries entered in [start_ms, end_ms), with their arms, goals and sends."""
    versions = {int(r[0]): load_version(tx, project, journey_id, int(r[0])) for r in tx.fetchall(
        "SELECT version FROM journey_versions WHERE project = ? AND journey_id = ?",
        (project, journey_id))}
    out = JourneyData(versions)
    args = [project, journey_id]
    rng, rng_args = _range_sql(start_ms, end_ms)
    for uid, key, version, entered, data in tx.fetchall(
            "SELECT s.user_id, s.entry_key, s.version, s.entered_ms, s.data FROM "
            f"journey_states s WHERE s.project = ? AND s.journey_id = ?{rng}", args + rng_args):
        out.entries[(int(uid), str(key))] = (int(version), int(entered), str(data))
    # Joined on the state row so the date range applies to every table alike.
    join = ("JOIN journey_states s ON s.project = t.project AND s.journey_id = t.journey_id "
            "AND s.user_id = t.user_id AND s.entry_key = t.entry_key")
    splits = sorted({nid for j in versions.values() for nid, n in j.nodes.items()
                     if n.type == "experiment"})
    if splits:
        marks = ",".join("?" * len(splits))
        for uid, key, node, detail in tx.fetchall(
                f"SELECT t.user_id, t.entry_key, t.node, t.detail FROM journey_log t {join} "
                f"WHERE t.project = ? AND t.journey_id = ? AND t.kind = 'node' "
                f"AND t.node IN ({marks}){rng}", [*args, *splits, *rng_args]):
            arm = orjson.loads(detail).get("branch") if detail else None
            if arm is not None:
                # A user looping back through the split takes the same arm (stable hash).
                out.split_arms.setdefault(str(node), {})[(int(uid), str(key))] = str(arm)
    for uid, key, node, variant, created in tx.fetchall(
            f"SELECT t.user_id, t.entry_key, t.node, t.variant, MIN(t.created_ms) FROM "
            f"journey_outbox t {join} WHERE t.project = ? AND t.journey_id = ? AND "
            f"t.variant IS NOT NULL{rng} GROUP BY t.user_id, t.entry_key, t.node, t.variant",
            args + rng_args):
        out.content_arms.setdefault(str(node), {}).setdefault(
            (int(uid), str(key)), (str(variant), int(created)))
    for uid, key, goal, at_ms in tx.fetchall(
            f"SELECT t.user_id, t.entry_key, t.goal, t.at_ms FROM journey_goals t {join} "
            f"WHERE t.project = ? AND t.journey_id = ?{rng}", args + rng_args):
        out.goals.setdefault((int(uid), str(key)), {})[str(goal)] = int(at_ms)
    for uid, key, node, channel, count in tx.fetchall(
            f"SELECT t.user_id, t.entry_key, t.node, t.channel, COUNT(*) FROM journey_outbox t "
            f"{join} WHERE t.project = ? AND t.journey_id = ? AND t.status = 'sent'{rng} "
            "GROUP BY t.user_id, t.entry_key, t.node, t.channel", args + rng_args):
        out.sent.setdefault((int(uid), str(key)), {})[(str(node), str(channel))] = int(count)
    return out


def _window(data: JourneyData, entry: EntryKey, goal: Goal) -> tuple[int, int]:
    """The entry's conversion window [opened, closed], as the engine checks it."""
    _version, entered, raw = data.entries[entry]
    state = orjson.loads(raw)
    opened = int((state.get("event") or {}).get("$time") or entered)
    return opened, opened + parse_duration(goal.window)


def _goal_of(data: JourneyData, entry: EntryKey, name: str) -> Goal | None:
    j = data.versions.get(data.entries[entry][0])
    return next((g for g in j.goals if g.name == name), None) if j is not None else None


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        # A malformed amount ("12 yuan") earns nothing rather than failing the report.
        return 0.0


def goal_values(events: Any, project: str, data: JourneyData, converted: Iterable[EntryKey],
                goal: str, value_property: str) -> dict[EntryKey, dict[str, float]]:
    """Per converted entry, the goal events in its window: event id -> money.

    ``events`` is the event store. The goal's own filters (``where``, and the
    correlation key when the goal matches on it) apply, as they did in the engine.
    Event ids are kept so a user's overlapping windows count each event once.
    """
    windows: dict[EntryKey, tuple[Goal, int, int]] = {}
    for entry in converted:
        g = _goal_of(data, entry, goal)
        if g is not None:
            windows[entry] = (g, *_window(data, entry, g))
    if not windows:
        return {}
    names = sorted({g.event.event for g, _, _ in windows.values()})
    start = min(w[1] for w in windows.values())
    end = max(w[2] for w in windows.values()) + 1
    table = events.scan(project, ["event_id", "event", "user_id", "time", "properties"],
                        start_ms=start, end_ms=end, events=names)
    users = sorted({uid for uid, _ in windows})
    table = table.filter(pc.is_in(table.column("user_id"), value_set=pa.array(users, pa.int64())))
    by_user: dict[int, list[tuple[str, str, int, dict[str, Any]]]] = {}
    # safe=False: a backend keeping microseconds must not fail the report over them.
    times = pc.cast(pc.cast(table.column("time"), pa.timestamp("ms"), safe=False),
                    pa.int64()).to_pylist()
    for eid, name, uid, t, props in zip(
            table.column("event_id").to_pylist(), table.column("event").to_pylist(),
            table.column("user_id").to_pylist(), times,
            table.column("properties").to_pylist(), strict=True):
        parsed = orjson.loads(props) if isinstance(props, str | bytes) else (props or {})
        by_user.setdefault(int(uid), []).append((str(eid), str(name), int(t), parsed))
    out: dict[EntryKey, dict[str, float]] = {}
    for entry, (g, opened, closed) in windows.items():
        found: dict[str, float] = {}
        key_value = orjson.loads(data.entries[entry][2]).get("key")
        correlation = _correlation_property(data, entry) if g.event.match_correlation else None
        for eid, name, t, props in by_user.get(entry[0], ()):
            if name != g.event.event or not opened <= t <= closed:
                continue
            if not where_holds(g.event.where, props):
                continue
            if correlation is not None and str(props.get(correlation)) != key_value:
                continue
            found[eid] = _number(props.get(value_property))
        out[entry] = found
    return out


def _correlation_property(data: JourneyData, entry: EntryKey) -> str | None:
    j = data.versions.get(data.entries[entry][0])
    return getattr(j.entry, "correlation_key", None) if j is not None else None


def default_value_property(versions: Mapping[int, Journey], goal: str) -> str | None:
    """The goal's declared money property, when goal definitions carry one."""
    for j in versions.values():
        for g in j.goals:
            if g.name == goal:
                declared = getattr(g, "value_property", None)
                if declared:
                    return str(declared)
    return None
