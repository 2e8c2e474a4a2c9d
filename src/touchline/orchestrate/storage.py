"""The journey engine's tables in the state store, and the small reads and writes on them.

Tables (declared through the ``state_schema`` hook, one DDL list per backend):

- ``journeys``: one row per journey (current version, status active|paused).
- ``journey_versions``: every applied definition, immutable once written.
- ``journey_states``: one row per (journey, user, entry): where the user is, when
  the next timer is due (``due_ms``, indexed: the scheduler claims due rows from this
  index in batches instead of keeping a sleeping task per user), what it waits for.
- ``journey_log``: the per-user timeline (entered, each node, exit, goal), also the
  source of per-node stats.
- ``journey_goals``: one row per (journey, user, entry, goal) once converted.
- ``journey_outbox``: messages written in the same transaction as the step that made
  them, keyed by their deterministic message id.
- ``journey_delivery``: the delivery log of every outbox row (queued, sending, sent,
  retried, failed, skipped, deferred) with the provider's answer.
- ``journey_consent``: each user's consent and subscription groups.
- ``journey_cursors``: named positions (the segment-signal offset, schedule runs).
- ``content_bandit``: per bandit message node, each variant's sends and conversions
  (:mod:`touchline.orchestrate.bandit`). ``journey_outbox.variant`` names the content
  variant a message carries.

Also here: :class:`State` (one ``journey_states`` row), :class:`Writes` (everything
one engine batch changes, flushed with a few ``executemany`` calls) and :class:`Book`
(the definitions by version, cached, and which events each one watches).

All functions take a state-store transaction with the dialect-neutral surface
(``execute/executemany/fetchall/fetchone`` with ``?`` placeholders).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ..errors import NotFound
from .bandit import BANDIT_DDL, count_conversions
from .model import EventEntry, Journey, SegmentEntry, WaitNode

__all__ = [
    "SCHEMA_NAME",
    "STATE_COLUMNS",
    "STATE_SCHEMA",
    "Book",
    "JourneyRecord",
    "State",
    "Tx",
    "Writes",
    "apply_journey",
    "cursor_get",
    "cursor_set",
    "entry_event",
    "get_journey",
    "list_journeys",
    "load_version",
    "save_version",
    "segment_event",
    "set_status",
    "wait_name",
    "watched_events",
]

SCHEMA_NAME = "journeys"


class Tx(Protocol):
    """The dialect-neutral surface of a state-store transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...

    def fetchall(self, sql: str, params: Sequence[Any] = ...) -> list[Any]: ...

    def fetchone(self, sql: str, params: Sequence[Any] = ...) -> Any: ...


def _tables(serial_pk: str) -> list[str]:
    # Only the auto-numbered ids differ between backends.
    return [
        """CREATE TABLE IF NOT EXISTS journeys (
            project TEXT NOT NULL,
            journey_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (project, journey_id))""",
        """CREATE TABLE IF NOT EXISTS journey_versions (
            project TEXT NOT NULL,
            journey_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            definition TEXT NOT NULL,
            migrate TEXT,
            created_ms BIGINT NOT NULL,
            PRIMARY KEY (project, journey_id, version))""",
        """CREATE TABLE IF NOT EXISTS journey_states (
            project TEXT NOT NULL,
            journey_id TEXT NOT NULL,
            user_id BIGINT NOT NULL,
            entry_key TEXT NOT NULL,
            version INTEGER NOT NULL,
            node TEXT NOT NULL,
            status TEXT NOT NULL,
            due_ms BIGINT,
            wait_event TEXT,
            data TEXT NOT NULL,
            entered_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            exit_reason TEXT,
            PRIMARY KEY (project, journey_id, user_id, entry_key))""",
        # The due index: the scheduler reads only rows whose timer is set.
        "CREATE INDEX IF NOT EXISTS journey_states_due ON journey_states (due_ms) "
        "WHERE due_ms IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS journey_states_user ON journey_states (project, user_id)",
        f"""CREATE TABLE IF NOT EXISTS journey_log (
            id {serial_pk},
            project TEXT NOT NULL,
            journey_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            user_id BIGINT NOT NULL,
            entry_key TEXT NOT NULL,
            node TEXT,
            kind TEXT NOT NULL,
            detail TEXT,
            at_ms BIGINT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS journey_log_user ON journey_log (project, user_id)",
        "CREATE INDEX IF NOT EXISTS journey_log_journey ON journey_log (project, journey_id)",
        """CREATE TABLE IF NOT EXISTS journey_goals (
            project TEXT NOT NULL,
            journey_id TEXT NOT NULL,
            user_id BIGINT NOT NULL,
            entry_key TEXT NOT NULL,
            goal TEXT NOT NULL,
            version INTEGER NOT NULL,
            node TEXT,
            message_node TEXT,
            at_ms BIGINT NOT NULL,
            PRIMARY KEY (project, journey_id, user_id, entry_key, goal))""",
        """CREATE TABLE IF NOT EXISTS journey_outbox (
            message_id TEXT PRIMARY KEY,
            project TEXT NOT NULL,
            journey_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            user_id BIGINT NOT NULL,
            entry_key TEXT NOT NULL,
            node TEXT NOT NULL,
            channel TEXT NOT NULL,
            category TEXT NOT NULL,
            content_key TEXT NOT NULL,
            payload TEXT NOT NULL,
            priority INTEGER NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_ms BIGINT,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            last_error TEXT)""",
        # Pending rows only: the delivery worker's claim index.
        "CREATE INDEX IF NOT EXISTS journey_outbox_due ON journey_outbox (next_ms) "
        "WHERE next_ms IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS journey_outbox_journey ON journey_outbox (project, journey_id)",
        f"""CREATE TABLE IF NOT EXISTS journey_delivery (
            id {serial_pk},
            message_id TEXT NOT NULL,
            status TEXT NOT NULL,
            detail TEXT,
            at_ms BIGINT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS journey_delivery_msg ON journey_delivery (message_id)",
        "CREATE INDEX IF NOT EXISTS journey_outbox_user ON journey_outbox (project, user_id)",
        # Consent and subscription groups per user (policy.ConsentState as JSON).
        """CREATE TABLE IF NOT EXISTS journey_consent (
            project TEXT NOT NULL,
            user_id BIGINT NOT NULL,
            state TEXT NOT NULL,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (project, user_id))""",
        """CREATE TABLE IF NOT EXISTS journey_cursors (
            name TEXT PRIMARY KEY,
            value BIGINT NOT NULL)""",
    ]


# Appended after the first release of the tables (the list is append-only: its length
# is the schema version). Content variants: the variant each message carries, and the
# bandit's arm counts, which the engine and the outbox update in their own transactions.
_CONTENT = ["ALTER TABLE journey_outbox ADD COLUMN variant TEXT", *BANDIT_DDL]

STATE_SCHEMA: dict[str, list[str]] = {
    "sqlite": [*_tables("INTEGER PRIMARY KEY AUTOINCREMENT"), *_CONTENT],
    "postgres": [*_tables("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"), *_CONTENT],
}


@dataclass(frozen=True, slots=True)
class JourneyRecord:
    """A journey as stored: its current version and status."""

    project: str
    journey_id: str
    version: int
    status: str
    updated_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "id": self.journey_id, "version": self.version,
                "status": self.status, "updated_ms": self.updated_ms}


def get_journey(tx: Tx, project: str, journey_id: str) -> JourneyRecord:
    row = tx.fetchone(
        "SELECT project, journey_id, version, status, updated_ms FROM journeys "
        "WHERE project = ? AND journey_id = ?", (project, journey_id))
    if row is None:
        raise NotFound(f"journey {journey_id!r} does not exist in project {project!r}")
    return JourneyRecord(row[0], row[1], int(row[2]), row[3], int(row[4]))


def list_journeys(tx: Tx, project: str | None = None) -> list[JourneyRecord]:
    sql = "SELECT project, journey_id, version, status, updated_ms FROM journeys"
    params: list[Any] = []
    if project is not None:
        sql += " WHERE project = ?"
        params.append(project)
    rows = tx.fetchall(sql + " ORDER BY project, journey_id", params)
    return [JourneyRecord(r[0], r[1], int(r[2]), r[3], int(r[4])) for r in rows]


def save_version(
    tx: Tx, journey: Journey, now_ms: int, migrate: dict[str, str] | None = None
) -> int:
    """Store ``journey`` as the next version and make it current; returns the version."""
    row = tx.fetchone(
        "SELECT MAX(version) FROM journey_versions WHERE project = ? AND journey_id = ?",
        (journey.project, journey.id))
    version = int(row[0] or 0) + 1 if row is not None else 1
    tx.execute(
        "INSERT INTO journey_versions (project, journey_id, version, definition, migrate, "
        "created_ms) VALUES (?, ?, ?, ?, ?, ?)",
        (journey.project, journey.id, version, journey.model_dump_json(),
         orjson.dumps(migrate).decode() if migrate else None, now_ms))
    updated = tx.execute(
        "UPDATE journeys SET version = ?, updated_ms = ? WHERE project = ? AND journey_id = ?",
        (version, now_ms, journey.project, journey.id))
    if getattr(updated, "rowcount", 0) == 0:
        tx.execute(
            "INSERT INTO journeys (project, journey_id, version, status, updated_ms) "
            "VALUES (?, ?, ?, 'active', ?)", (journey.project, journey.id, version, now_ms))
    return version


def load_version(tx: Tx, project: str, journey_id: str, version: int) -> Journey:
    row = tx.fetchone(
        "SELECT definition FROM journey_versions WHERE project = ? AND journey_id = ? "
        "AND version = ?", (project, journey_id, version))
    if row is None:
        raise NotFound(f"journey {journey_id!r} has no version {version}")
    return Journey.model_validate_json(row[0])


def set_status(tx: Tx, project: str, journey_id: str, status: str, now_ms: int) -> None:
    get_journey(tx, project, journey_id)
    tx.execute(
        "UPDATE journeys SET status = ?, updated_ms = ? WHERE project = ? AND journey_id = ?",
        (status, now_ms, project, journey_id))


def cursor_get(tx: Tx, name: str) -> int:
    row = tx.fetchone("SELECT value FROM journey_cursors WHERE name = ?", (name,))
    return int(row[0]) if row is not None else 0


def cursor_set(tx: Tx, name: str, value: int) -> None:
    if getattr(tx.execute("UPDATE journey_cursors SET value = ? WHERE name = ?",
                          (value, name)), "rowcount", 0) == 0:
        tx.execute("INSERT INTO journey_cursors (name, value) VALUES (?, ?)", (name, value))


def apply_journey(
    tx: Tx, journey: Journey, now_ms: int, migrate: dict[str, str] | None = None
) -> int:
    """Store a new version; move users in flight at ``migrate``'s nodes onto it.

    Users at any other node stay on the version they entered. A migrated user is
    stepped into the named node of the new version by the timer loop
    (``wait_event = '$arrive'``, due now), so its delay or wait starts afresh there.
    """
    from ..errors import InvalidInput

    for old, new in (migrate or {}).items():
        if new not in journey.nodes:
            raise InvalidInput(f"migrate.{old}", f"the new version has no node {new!r}")
    version = save_version(tx, journey, now_ms, migrate)
    for old, new in (migrate or {}).items():
        tx.execute(
            "UPDATE journey_states SET version = ?, node = ?, due_ms = ?, wait_event = ?, "
            "updated_ms = ? WHERE project = ? AND journey_id = ? AND status = 'active' "
            "AND node = ? AND version < ?",
            (version, new, now_ms, "$arrive", now_ms, journey.project, journey.id, old,
             version))
    return version


STATE_COLUMNS = ("project, journey_id, user_id, entry_key, version, node, status, due_ms, "
         "wait_event, data, entered_ms, updated_ms, exit_reason")


def segment_event(segment: str, change: str) -> str:
    """The pseudo-event name of a segment signal."""
    return f"$segment_{change}:{segment}"


@dataclass(slots=True)
class State:
    """One user's position in one journey entry (a ``journey_states`` row)."""

    project: str
    journey_id: str
    user_id: int
    entry_key: str
    version: int
    node: str
    status: str
    due_ms: int | None
    wait_event: str | None
    data: dict[str, Any]
    entered_ms: int
    updated_ms: int
    exit_reason: str | None = None
    new: bool = False

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> State:
        return cls(r[0], r[1], int(r[2]), r[3], int(r[4]), r[5], r[6],
                   None if r[7] is None else int(r[7]), r[8], orjson.loads(r[9]),
                   int(r[10]), int(r[11]), r[12])

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.project, self.journey_id, self.user_id, self.entry_key)


class Writes:
    """Everything one batch changes, flushed with a few executemany calls.

    ``transitions`` counts node arrivals: an entry, and each node a user reaches.
    """

    def __init__(self) -> None:
        self.states: dict[tuple[str, str, int, str], State] = {}
        self.logs: list[tuple[Any, ...]] = []
        self.outbox: list[tuple[Any, ...]] = []
        self.goals: list[tuple[Any, ...]] = []
        # (bandit key, arm, message id) of bandit messages whose goal converted.
        self.bandit_conversions: list[tuple[str, str, str]] = []
        self.profile_updates: list[tuple[str, int, dict[str, Any]]] = []
        self.transitions = 0

    def touch(self, st: State) -> None:
        self.states[st.key] = st

    def log(self, st: State, node: str | None, kind: str, detail: Any, at_ms: int) -> None:
        self.logs.append((st.project, st.journey_id, st.version, st.user_id, st.entry_key,
                          node, kind, None if detail is None else orjson.dumps(detail).decode(),
                          at_ms))

    def flush(self, tx: Tx) -> None:
        new = [s for s in self.states.values() if s.new]
        old = [s for s in self.states.values() if not s.new]
        if new:
            tx.executemany(
                f"INSERT INTO journey_states ({STATE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(s.project, s.journey_id, s.user_id, s.entry_key, s.version, s.node,
                  s.status, s.due_ms, s.wait_event, orjson.dumps(s.data).decode(),
                  s.entered_ms, s.updated_ms, s.exit_reason) for s in new])
            for s in new:
                s.new = False
        if old:
            tx.executemany(
                "UPDATE journey_states SET version = ?, node = ?, status = ?, due_ms = ?, "
                "wait_event = ?, data = ?, updated_ms = ?, exit_reason = ? "
                "WHERE project = ? AND journey_id = ? AND user_id = ? AND entry_key = ?",
                [(s.version, s.node, s.status, s.due_ms, s.wait_event,
                  orjson.dumps(s.data).decode(), s.updated_ms, s.exit_reason,
                  s.project, s.journey_id, s.user_id, s.entry_key) for s in old])
        if self.logs:
            tx.executemany(
                "INSERT INTO journey_log (project, journey_id, version, user_id, entry_key, "
                "node, kind, detail, at_ms) VALUES (?,?,?,?,?,?,?,?,?)", self.logs)
        if self.outbox:
            # A replayed step produces the same ids; the first copy wins.
            tx.executemany(
                "INSERT INTO journey_outbox (message_id, project, journey_id, version, "
                "user_id, entry_key, node, channel, category, content_key, payload, priority, "
                "status, attempts, next_ms, created_ms, updated_ms, variant) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'queued',0,?,?,?,?) "
                "ON CONFLICT (message_id) DO NOTHING", self.outbox)
        if self.goals:
            tx.executemany(
                "INSERT INTO journey_goals (project, journey_id, user_id, entry_key, goal, "
                "version, node, message_node, at_ms) VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT DO NOTHING", self.goals)
        # With the goal rows: a conversion rewards its bandit arm in the same commit.
        count_conversions(tx, self.bandit_conversions)


class Book:
    """Journey definitions by (project, id, version), and what each event touches."""

    ttl_s = 1.0

    def __init__(self) -> None:
        self.defs: dict[tuple[str, str, int], Journey] = {}
        self.current: dict[tuple[str, str], tuple[int, str]] = {}
        self.entries: dict[tuple[str, str], list[Journey]] = {}
        self.watched: dict[str, set[str]] = {}
        self.loaded = -1e9

    def refresh(self, tx: Tx, force: bool = False) -> None:
        if not force and time.monotonic() - self.loaded < self.ttl_s:
            return
        self.current = {(r.project, r.journey_id): (r.version, r.status)
                        for r in list_journeys(tx)}
        for row in tx.fetchall("SELECT project, journey_id, version FROM journey_versions"):
            key = (row[0], row[1], int(row[2]))
            if key not in self.defs:
                self.defs[key] = load_version(tx, *key)
        self.entries = {}
        self.watched = {}
        for (project, _jid, _v), j in self.defs.items():
            names = self.watched.setdefault(project, set())
            names.update(watched_events(j))
        for (project, jid), (version, status) in self.current.items():
            j = self.defs[(project, jid, version)]
            if status != "active":
                continue
            trigger = entry_event(j)
            if trigger is not None:
                self.entries.setdefault((project, trigger), []).append(j)
        self.loaded = time.monotonic()

    def get(self, project: str, journey_id: str, version: int) -> Journey:
        return self.defs[(project, journey_id, version)]

    def active(self, project: str, journey_id: str) -> bool:
        return self.current.get((project, journey_id), (0, ""))[1] == "active"


def entry_event(j: Journey) -> str | None:
    if isinstance(j.entry, EventEntry):
        return j.entry.event
    if isinstance(j.entry, SegmentEntry):
        return segment_event(j.entry.segment, "enter")
    return None


def watched_events(j: Journey) -> set[str]:
    names = {g.event.event for g in j.goals}
    for c in j.exit_when:
        if c.event is not None:
            names.add(c.event.event)
        if c.leave_segment is not None:
            names.add(segment_event(c.leave_segment, "exit"))
    for node in j.nodes.values():
        if isinstance(node, WaitNode):
            names.add(wait_name(node))
    return names


def wait_name(node: WaitNode) -> str:
    if node.event is not None:
        return node.event.event
    assert node.segment is not None
    return segment_event(node.segment, node.change)
