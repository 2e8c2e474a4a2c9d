"""The audience engine: batch computation, preview, real-time updates and
time-boundary flips of dynamic segments, with enter/exit signals.

Membership is one function of (conditions, data, time), written twice: as SQL
(:mod:`.audience_sql`), which batch computation and preview run over every profile,
and in Python (:mod:`.audience_eval`), which the real-time path and boundary flips
run over the rows of just the users concerned, read in one query. The tests run
both on random data and definitions and require the same answers.

Time boundaries live in the ``audience_due`` index (one row per segment and user
with the next moment its membership can change without a new event). The worker
sleeps until the earliest one, claims due rows, and re-evaluates only those users:
nothing is re-polled.

Signals: every enter/exit is a row in ``segment_history`` (the durable signal
table; read it with :func:`.segments.signals_after`) and is passed, after commit,
to the callbacks registered with :meth:`AudienceEngine.subscribe`.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pyarrow as pa

from ..clock import Clock
from ..errors import InvalidInput, TouchlineError
from .audience_eval import is_member, load_users_sql, next_boundary, rows_by_user
from .audience_model import (
    Condition,
    Definition,
    FirstLast,
    InSegment,
    Layer,
    Performed,
    Trait,
    parse_condition,
    parse_definition,
    walk,
)
from .audience_reader import EventReader, StoreEventReader
from .audience_sql import (
    Expanded,
    boundary_sql,
    count_sql,
    expand,
    membership_sql,
    sample_sql,
    walk_expanded,
)
from .segments import (
    Segment,
    Tx,
    apply_changes,
    get_segment,
    list_segments,
    member_ids,
    replace_members,
    save_dynamic_segment,
)

if TYPE_CHECKING:
    from ..store.state import StateStore

__all__ = [
    "AudienceEngine",
    "EventReader",
    "LayerSource",
    "Preview",
    "Signal",
    "StoreEventReader",
]


class LayerSource(Protocol):
    def members(self, project: str, layer: Layer) -> Iterable[int]:
        """Users in an RFM layer or lifecycle stage; InvalidInput when unknown."""
        ...


@dataclass(frozen=True, slots=True)
class Signal:
    """A user entered or left a segment at ``at_ms`` (after commit)."""

    project: str
    segment: str
    user_id: int
    change: Literal["enter", "exit"]
    at_ms: int


@dataclass(frozen=True, slots=True)
class Preview:
    count: int
    sample: list[int]
    at_ms: int


Subscriber = Callable[[Sequence[Signal]], None]

log = logging.getLogger(__name__)

# Most user ids bound into one state-store statement.
_CHUNK = 500


class _Resolver:
    """Resolves segment references and layers inside one state transaction."""

    def __init__(self, tx: Tx, project: str, layers: LayerSource | None) -> None:
        self.tx, self.project, self.layers = tx, project, layers

    def segment(self, name: str) -> Condition | frozenset[int]:
        seg = get_segment(self.tx, self.project, name)
        if seg.kind == "static" or seg.definition is None:
            return frozenset(member_ids(self.tx, self.project, name))
        return parse_condition(seg.definition["conditions"])

    def layer(self, layer: Layer) -> frozenset[int]:
        if self.layers is None:
            what = "rfm_layer" if layer.kind == "rfm" else "lifecycle_stage"
            raise InvalidInput(what, "the analysis engine provides no layers here")
        return frozenset(int(u) for u in self.layers.members(self.project, layer))


@dataclass(slots=True)
class _Compiled:
    name: str
    cond: Expanded
    events: frozenset[str]  # event names its event conditions read
    traits: bool  # reads profile properties


def _compiled(name: str, cond: Expanded) -> _Compiled:
    events: set[str] = set()
    traits = False
    for node in walk_expanded(cond):
        if isinstance(node, Performed | FirstLast):
            events.add(node.event)
        elif isinstance(node, Trait):
            traits = True
    return _Compiled(name, cond, frozenset(events), traits)


def _chunks(items: Sequence[int], size: int = _CHUNK) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class AudienceEngine:
    """Keeps the dynamic segments of every project current.

    ``state`` is the state store, ``events`` an :class:`EventReader`, ``clock`` the
    time source; ``layers`` answers RFM-layer and lifecycle-stage conditions.
    """

    def __init__(self, state: StateStore, events: EventReader, clock: Clock, *,
                 layers: LayerSource | None = None, dialect: str = "duckdb") -> None:
        self.state = state
        self.events = events
        self.clock = clock
        self.layers = layers
        self.dialect = dialect
        self._subscribers: list[Subscriber] = []
        self._resolved: dict[tuple[str, str], tuple[int, _Compiled]] = {}
        # One evaluation at a time per process: a real-time update and a boundary
        # flip of the same user must not interleave their read and their write.
        self._lock = threading.RLock()
        self.wakeup = threading.Event()

    def close(self) -> None:
        """Release the event-store connections the engine's reader keeps open."""
        close = getattr(self.events, "close", None)
        if close is not None:
            close()

    # -- signals -----------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(signals)`` after each commit that changed memberships.

        Returns a function that unsubscribes. A callback that raises does not undo
        the change (it is committed) nor stop the other callbacks.
        """
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _emit(self, signals: list[Signal]) -> None:
        if not signals:
            return
        for callback in list(self._subscribers):
            try:
                callback(signals)
            except Exception:  # a consumer's bug must not stop the audience engine
                log.exception("segment signal callback failed")

    # -- definitions -------------------------------------------------------------------

    def _expand(self, tx: Tx, project: str, cond: Condition) -> Expanded:
        return expand(cond, _Resolver(tx, project, self.layers))

    def preview(self, project: str, definition: dict[str, Any] | Definition,
                sample: int = 20) -> Preview:
        """Count and a sample of the users a definition selects now; saves nothing."""
        d = definition if isinstance(definition, Definition) else parse_definition(
            definition, name=str(definition.get("name") or "preview"))
        at = self.clock.now_ms()
        with self.state.transaction() as tx:
            cond = self._expand(tx, project, d.conditions)
        count = self.events.rows(project, count_sql(cond, at, self.dialect))[0][0]
        users = [int(r[0]) for r in self.events.rows(project, sample_sql(cond, at, sample, self.dialect))]
        return Preview(int(count), users, at)

    def save(self, project: str, definition: dict[str, Any] | Definition) -> Segment:
        """Validate, save and compute a dynamic segment (created or updated)."""
        d = definition if isinstance(definition, Definition) else parse_definition(definition)
        with self._lock, self.state.transaction() as tx:
            # Resolve now so an unknown or cyclic reference is refused before saving.
            self._expand(tx, project, d.conditions)
            save_dynamic_segment(tx, project, d.name, d.document,
                                 description=d.description, now_ms=self.clock.now_ms())
            self._check_no_cycle(tx, project, d.name)
        self.compute(project, d.name)
        with self.state.transaction() as tx:
            return get_segment(tx, project, d.name)

    def _check_no_cycle(self, tx: Tx, project: str, name: str) -> None:
        # Saving B that uses A is fine; A then using B must be refused. Expanding the
        # saved segment itself through the resolver detects that.
        self._expand(tx, project, InSegment(name))

    # -- batch ----------------------------------------------------------------------------

    def compute(self, project: str, name: str) -> list[Signal]:
        """Recompute a segment over every profile; record and signal the difference."""
        with self._lock:
            at = self.clock.now_ms()
            with self.state.transaction() as tx:
                seg = get_segment(tx, project, name)
                if seg.kind != "dynamic" or seg.definition is None:
                    raise InvalidInput("name", f"segment {name!r} is static; it is not computed")
                cond = self._expand(tx, project, parse_condition(seg.definition["conditions"]))
                self._resolved[(project, name)] = (seg.updated_ms, _compiled(name, cond))
            members = {int(r[0]) for r in self.events.rows(
                project, membership_sql(cond, at, None, self.dialect))}
            sql = boundary_sql(cond, at, None, self.dialect)
            due = self.events.rows(project, sql) if sql else []
            with self.state.transaction() as tx:
                diff = replace_members(tx, project, name, members, at)
                tx.execute("DELETE FROM audience_due WHERE project = ? AND segment = ?",
                           (project, name))
                self._insert_due(tx, project, [(name, u, t) for u, t in due])
            signals = self._signals(project, name, diff.entered, diff.exited, at)
        self._emit(signals)
        self.wakeup.set()
        return signals

    def compute_all(self, project: str) -> list[Signal]:
        with self.state.transaction() as tx:
            names = [s.name for s in list_segments(tx, project, "dynamic")]
        return [s for name in names for s in self.compute(project, name)]

    def compute_dependents(self, project: str, name: str) -> list[Signal]:
        """Recompute the dynamic segments that use ``name``, directly or through other
        segments (after a static list changed outside the event stream)."""
        with self.state.transaction() as tx:
            dynamic = list_segments(tx, project, "dynamic")
        uses: dict[str, set[str]] = {}
        for seg in dynamic:
            assert seg.definition is not None
            cond = parse_condition(seg.definition["conditions"])
            uses[seg.name] = {c.segment for c in walk(cond) if isinstance(c, InSegment)}
        affected: set[str] = set()
        frontier = {name}
        while frontier:
            frontier = {s for s, refs in uses.items() if refs & frontier} - affected
            affected |= frontier
        out: list[Signal] = []
        for seg in dynamic:  # in name order, so the same change gives the same signals
            if seg.name in affected and seg.name != name:
                out += self.compute(project, seg.name)
        return out

    # -- real time ------------------------------------------------------------------------

    @staticmethod
    def touched(events: pa.Table) -> dict[str, tuple[set[int], set[str]]]:
        """Per project, the users an ingest batch touched and the event names it holds."""
        out: dict[str, tuple[set[int], set[str]]] = {}
        if events.num_rows == 0:
            return out
        names = events.column_names
        user_col = "user_id" if "user_id" in names else "profile_id"
        projects = (events.column("project").to_pylist() if "project" in names
                    else ["default"] * events.num_rows)
        for project, user, event in zip(projects, events.column(user_col).to_pylist(),
                                        events.column("event").to_pylist(), strict=True):
            if user is None:
                continue
            users, event_names = out.setdefault(project, (set(), set()))
            users.add(int(user))
            if event is not None:
                event_names.add(event)
        return out

    def on_events(self, events: pa.Table) -> list[Signal]:
        """Update the segments a committed ingest batch can affect, for its users."""
        signals: list[Signal] = []
        for project, (users, names) in self.touched(events).items():
            signals += self.refresh(project, sorted(users), names)
        return signals

    def refresh(self, project: str, users: Sequence[int],
                event_names: Iterable[str] | None = None) -> list[Signal]:
        """Re-evaluate ``users`` in the project's dynamic segments and signal changes.

        With ``event_names`` (the events that just arrived), only segments that read
        those events or profile traits are evaluated; without, every segment is
        (use that after a profile change).
        """
        names = None if event_names is None else frozenset(event_names)
        with self._lock:
            at = self.clock.now_ms()
            segs = [seg for seg in self._dynamic(project)
                    if names is None or seg.traits or seg.events & names]
            signals = self._evaluate(project, segs, users, at, {}) if segs else []
        self._emit(signals)
        self.wakeup.set()
        return signals

    def _dynamic(self, project: str) -> list[_Compiled]:
        """The project's dynamic segments, resolved.

        Resolutions are cached per segment version: resolving reads static lists and
        may run an analysis (RFM layers), too slow for every ingest batch. A static
        list or a layer therefore counts as of the segment's last :meth:`compute`
        (which :meth:`compute_dependents` runs when a list changes).
        """
        out: list[_Compiled] = []
        with self.state.transaction() as tx:
            for seg in list_segments(tx, project, "dynamic"):
                key = (project, seg.name)
                cached = self._resolved.get(key)
                if cached is None or cached[0] != seg.updated_ms:
                    assert seg.definition is not None
                    try:
                        cond = self._expand(tx, project,
                                            parse_condition(seg.definition["conditions"]))
                    except TouchlineError:
                        # One broken segment (say, a list it used was deleted behind its
                        # back) must not stop the others from updating.
                        log.exception("segment %r of %r cannot be resolved", seg.name, project)
                        continue
                    cached = (seg.updated_ms, _compiled(seg.name, cond))
                    self._resolved[key] = cached
                out.append(cached[1])
        return out

    def _evaluate(self, project: str, segs: Sequence[_Compiled], users: Sequence[int], at: int,
                  change_times: dict[int, int]) -> list[Signal]:
        """Evaluate ``users`` in ``segs`` as of ``at`` (one event-store query for their
        rows, then :mod:`.audience_eval`); write the
        differences and the next boundaries. ``change_times`` gives, per user, the time
        to record a change at (a boundary's due time) when it is not ``at``."""
        names = {name for seg in segs for name in seg.events}
        profiles, events = self.events.rows_many(project, load_users_sql(users, self.dialect))
        data = rows_by_user(profiles, events, names)
        members: list[set[int]] = []
        dues: list[list[tuple[int, int]]] = []
        for seg in segs:
            members.append({u for u, rows in data.items() if is_member(seg.cond, u, rows, at)})
            due_rows = []
            for u, rows in data.items():
                nxt = next_boundary(seg.cond, rows, at)
                if nxt is not None:
                    due_rows.append((u, nxt))
            dues.append(due_rows)
        signals: list[Signal] = []
        names_in = [seg.name for seg in segs]
        seg_marks = ",".join("?" * len(names_in))
        with self.state.transaction() as tx:
            # Few statements for all segments at once: each is a round trip on PostgreSQL.
            current: dict[str, set[int]] = defaultdict(set)
            for part in _chunks(users):
                marks = ",".join("?" * len(part))
                for segment, user in tx.fetchall(
                        f"SELECT segment, user_id FROM segment_members WHERE project = ? "
                        f"AND segment IN ({seg_marks}) AND user_id IN ({marks})",
                        [project, *names_in, *part]):
                    current[segment].add(int(user))
                tx.execute(f"DELETE FROM audience_due WHERE project = ? AND segment IN "
                           f"({seg_marks}) AND user_id IN ({marks})",
                           [project, *names_in, *part])
            self._insert_due(tx, project, [
                (seg.name, u, t) for seg, due_rows in zip(segs, dues, strict=True)
                for u, t in due_rows])
            for seg, now_in in zip(segs, members, strict=True):
                was_in = current.get(seg.name, set())
                entered = sorted(now_in - was_in)
                exited = sorted(was_in - now_in)
                by_time: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
                for u in entered:
                    by_time[change_times.get(u, at)][0].append(u)
                for u in exited:
                    by_time[change_times.get(u, at)][1].append(u)
                for t, (ins, outs) in sorted(by_time.items()):
                    apply_changes(tx, project, seg.name, ins, outs, t)
                signals += [Signal(project, seg.name, u, "enter", change_times.get(u, at))
                            for u in entered]
                signals += [Signal(project, seg.name, u, "exit", change_times.get(u, at))
                            for u in exited]
        return signals

    @staticmethod
    def _insert_due(tx: Tx, project: str, due: Sequence[tuple[str, Any, Any]]) -> None:
        """Upsert (segment, user_id, due_ms) rows of the due index."""
        if due:
            tx.executemany(
                "INSERT INTO audience_due (project, segment, user_id, due_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (project, segment, user_id) DO UPDATE SET due_ms = excluded.due_ms",
                [(project, segment, int(u), int(t)) for segment, u, t in due],
            )

    @staticmethod
    def _signals(project: str, segment: str, entered: Iterable[int], exited: Iterable[int],
                 at: int) -> list[Signal]:
        return [*(Signal(project, segment, u, "enter", at) for u in entered),
                *(Signal(project, segment, u, "exit", at) for u in exited)]

    # -- time boundaries --------------------------------------------------------------------

    def next_due_ms(self) -> int | None:
        with self.state.transaction() as tx:
            row = tx.fetchone("SELECT MIN(due_ms) FROM audience_due")
        return None if row is None or row[0] is None else int(row[0])

    def run_due(self, limit: int = 5000) -> list[Signal]:
        """Flip the memberships whose boundary has come; returns the signals.

        Due rows are claimed (locked and deleted) in the transaction that writes the
        result, so two workers never flip the same user and a crash in between
        leaves the rows for the next run.
        """
        signals: list[Signal] = []
        with self._lock, self.state.transaction() as tx:
            at = self.clock.now_ms()
            # Everything below joins this transaction, so the row locks taken here
            # (PostgreSQL: FOR UPDATE SKIP LOCKED) hold until the results commit.
            rows = tx.fetchall(
                "SELECT project, segment, user_id, due_ms FROM audience_due "
                f"WHERE due_ms <= ? ORDER BY due_ms LIMIT ?{tx.dialect.skip_locked}",
                (at, limit),
            )
            groups: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
            for project, segment, user, due in rows:
                groups[(project, segment)][int(user)] = int(due)
            compiled: dict[str, dict[str, _Compiled]] = {}
            for (project, segment), dues in groups.items():
                tx.executemany(
                    "DELETE FROM audience_due WHERE project = ? AND segment = ? "
                    "AND user_id = ? AND due_ms = ?",
                    [(project, segment, u, t) for u, t in dues.items()],
                )
                if project not in compiled:
                    compiled[project] = {c.name: c for c in self._dynamic(project)}
                seg = compiled[project].get(segment)
                if seg is None:  # deleted, or made static, since the row was written
                    continue
                signals += self._evaluate(project, [seg], sorted(dues), at, dues)
        self._emit(signals)
        return signals

