"""Dry run: replay a journey over past events in virtual time, sending nothing.

The simulation runs the real engine against a throw-away SQLite state store and a
:class:`~touchline.clock.VirtualClock`: events are fed in time order, and every timer
that falls due between two events fires at its due time. Messages land in the
throw-away outbox and are only counted. Profiles are read from the live store (as
they are now: the event store keeps events, not past profile versions).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from ..clock import VirtualClock
from . import storage
from .engine import Engine, JourneyEvent, ProfileSource, segment_event
from .model import Journey, SegmentEntry
from .stats import journey_stats

__all__ = ["SimulationReport", "events_from_arrow", "simulate", "simulate_runtime"]


@dataclass
class SimulationReport:
    """What would have happened: entries, node arrivals, messages, goals, exits."""

    journey: str
    start_ms: int
    end_ms: int
    events_read: int = 0
    entered: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    goals: dict[str, int] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    still_in: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def events_from_arrow(table: pa.Table, project: str | None = None) -> list[JourneyEvent]:
    """Engine events from an Arrow table (user_id, event, time, properties JSON, ...).

    Rows without a user id (not stitched) are dropped: no journey can hold them.
    """
    cols = set(table.column_names)
    n = table.num_rows
    users = table.column("user_id").to_pylist()
    names = table.column("event").to_pylist()
    times = table.column("time").cast(pa.timestamp("ms")).cast(pa.int64()).to_pylist()
    props = table.column("properties").to_pylist() if "properties" in cols else [None] * n
    ids = table.column("event_id").to_pylist() if "event_id" in cols else [""] * n
    projects = (table.column("project").to_pylist() if "project" in cols
                else [project or "default"] * n)
    out: list[JourneyEvent] = []
    for i in range(n):
        if users[i] is None or names[i] is None or times[i] is None:
            continue
        raw = props[i]
        try:
            parsed = orjson.loads(raw) if isinstance(raw, str | bytes) and raw else (raw or {})
        except orjson.JSONDecodeError:
            parsed = {}
        out.append(JourneyEvent(str(projects[i]), int(users[i]), str(names[i]), int(times[i]),
                                parsed if isinstance(parsed, dict) else {}, str(ids[i] or "")))
    return out


def simulate(
    journey: Journey,
    events: Iterable[JourneyEvent],
    *,
    start_ms: int,
    end_ms: int,
    profiles: Callable[[str, Sequence[int]], dict[int, dict[str, Any]]] | None = None,
    segment_members: Sequence[int] = (),
    memberships: Mapping[str, Sequence[int]] | None = None,
    chunk: int = 5000,
) -> SimulationReport:
    """Replay ``events`` (any order) through ``journey`` from ``start_ms`` to ``end_ms``.

    For a segment-entry journey, ``segment_members`` enter at ``start_ms`` (besides any
    ``$segment_enter`` pseudo-events in ``events``). ``memberships`` (segment name ->
    users) is what conditions and content rules on segments see: the memberships of
    today, held fixed through the replay (changes of membership during the replayed
    period are not replayed).
    """
    from ..store.state import open_state_store
    from . import segments

    ordered = sorted((e for e in events if start_ms <= e.time_ms < end_ms),
                     key=lambda e: e.time_ms)
    clock = VirtualClock(start_ms)
    report = SimulationReport(journey.id, start_ms, end_ms, events_read=len(ordered))
    with tempfile.TemporaryDirectory(prefix="touchline-sim-") as tmp:
        store = open_state_store("", Path(tmp), clock=clock)
        try:
            store.ensure_schema(storage.SCHEMA_NAME, storage.STATE_SCHEMA)
            store.ensure_schema(segments.SCHEMA_NAME, segments.STATE_SCHEMA)
            with store.transaction() as tx:
                tx.executemany(
                    "INSERT INTO segment_members (project, segment, user_id, since_ms) "
                    "VALUES (?, ?, ?, ?)",
                    [(journey.project, name, int(u), start_ms)
                     for name, users in (memberships or {}).items() for u in set(users)])
            source: ProfileSource | None = None
            if profiles is not None:
                fetch = profiles

                def source(tx: Any, project: str, ids: Sequence[int]
                           ) -> dict[int, dict[str, Any]]:
                    return fetch(project, ids)

            engine = Engine(store, clock, profiles=source)
            with store.transaction() as tx:
                storage.apply_journey(tx, journey, start_ms)
            engine.refresh()
            if isinstance(journey.entry, SegmentEntry) and segment_members:
                name = segment_event(journey.entry.segment, "enter")
                engine.handle_events([JourneyEvent(journey.project, u, name, start_ms, {},
                                                   f"sim:{u}") for u in segment_members])
            i = 0
            while i < len(ordered):
                first = ordered[i].time_ms
                _fire_until(engine, clock, first)
                j = i
                # A chunk spans at most one second of event time, so timers fire
                # between events to within a second.
                while j < len(ordered) and j - i < chunk and ordered[j].time_ms < first + 1000:
                    j += 1
                engine.handle_events(ordered[i:j])
                i = j
            _fire_until(engine, clock, end_ms)
            with store.transaction() as tx:
                _fill(report, journey_stats(tx, journey.project, journey.id))
        finally:
            store.close()
    return report


def _fire_until(engine: Engine, clock: VirtualClock, until_ms: int) -> None:
    while (due := engine.next_due_ms()) is not None and due <= until_ms:
        clock.set(max(clock.now_ms(), due))
        engine.run_due(10_000)
    clock.set(max(clock.now_ms(), until_ms))


def _fill(report: SimulationReport, stats: dict[str, Any]) -> None:
    report.entered = stats["entered"]
    report.still_in = stats["active"]
    report.exits = stats["exit_reasons"]
    report.goals = stats["converted"]
    report.nodes = {n: s["reached"] for n, s in stats["nodes"].items() if s["reached"]}
    report.messages = {n: sum(s["messages"].values()) for n, s in stats["nodes"].items()
                       if s["messages"]}


def simulate_runtime(runtime: Any, journey: Journey, *, start_ms: int,
                     end_ms: int) -> SimulationReport:
    """:func:`simulate` over a data directory's own past events and profiles."""
    from .engine import entry_event, watched_events
    from .segments import member_ids

    names = set(watched_events(journey))
    trigger = entry_event(journey)
    if trigger is not None:
        names.add(trigger)
    real = [n for n in names if not n.startswith("$segment_")]
    table = runtime.events.scan(journey.project, ["event_id", "event", "user_id", "time",
                                                  "properties"],
                                start_ms=start_ms, end_ms=end_ms, events=real)
    members: list[int] = []
    with runtime.state.transaction() as tx:
        memberships = {name: sorted(member_ids(tx, journey.project, name))
                       for name in referenced_segments(journey)}
    if isinstance(journey.entry, SegmentEntry):
        members = memberships.get(journey.entry.segment, [])

    def profiles(project: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        from .hooks import state_profiles

        with runtime.state.transaction() as tx:
            return state_profiles(tx, project, ids)

    return simulate(journey, events_from_arrow(table, journey.project), start_ms=start_ms,
                    end_ms=end_ms, profiles=profiles, segment_members=members,
                    memberships=memberships)


# Keys under which a journey definition names a segment (conditions, content rules,
# entries, exits, waits).
_SEGMENT_KEYS = frozenset({"segment", "in_segment", "not_in_segment"})


def referenced_segments(journey: Journey) -> set[str]:
    """Every segment name a journey definition mentions, wherever it is."""
    found: set[str] = set()
    stack: list[Any] = [journey.model_dump()]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _SEGMENT_KEYS and isinstance(value, str):
                    found.add(value)
                elif key in _SEGMENT_KEYS and isinstance(value, list):
                    found.update(v for v in value if isinstance(v, str))
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return found
