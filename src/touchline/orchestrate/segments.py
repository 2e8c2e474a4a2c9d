"""Saved segments, their members and their membership history, in the state store.

A segment is either *dynamic* (a condition tree, kept current by the audience
engine) or *static* (a fixed list of users: a CSV upload, or the users behind a
number in an analysis). Both keep their current members in ``segment_members``
and every change in ``segment_history``. The history doubles as the signal
table: each row has an increasing ``id``, so a consumer (the journey engine) can
read "every enter/exit after id N" and never miss one.

All functions take an open state-store transaction ``tx`` (``execute``,
``executemany``, ``fetchall``, ``fetchone`` with ``?`` placeholders) and write
nothing outside it, so a caller can combine them with its own writes atomically.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from ..clock import SystemClock
from ..errors import Conflict, InvalidInput, NotFound

__all__ = [
    "SCHEMA_NAME",
    "STATE_SCHEMA",
    "Change",
    "Segment",
    "SegmentKind",
    "Tx",
    "apply_changes",
    "delete_segment",
    "get_segment",
    "history",
    "list_segments",
    "member_ids",
    "members_of",
    "replace_members",
    "save_dynamic_segment",
    "save_static_segment",
    "signals_after",
    "validate_name",
]

SegmentKind = Literal["static", "dynamic"]

SCHEMA_NAME = "audiences"


class Tx(Protocol):
    """The dialect-neutral surface of a state-store transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...

    def fetchall(self, sql: str, params: Sequence[Any] = ...) -> list[Any]: ...

    def fetchone(self, sql: str, params: Sequence[Any] = ...) -> Any: ...


def _tables(history_id: str) -> list[str]:
    # Only the auto-numbered history id differs between backends.
    return [
        """CREATE TABLE IF NOT EXISTS segments (
            project TEXT NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            definition TEXT,
            source TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            computed_ms BIGINT,
            member_count BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (project, name))""",
        """CREATE TABLE IF NOT EXISTS segment_members (
            project TEXT NOT NULL,
            segment TEXT NOT NULL,
            user_id BIGINT NOT NULL,
            since_ms BIGINT NOT NULL,
            PRIMARY KEY (project, segment, user_id))""",
        f"""CREATE TABLE IF NOT EXISTS segment_history (
            id {history_id},
            project TEXT NOT NULL,
            segment TEXT NOT NULL,
            user_id BIGINT NOT NULL,
            change TEXT NOT NULL,
            at_ms BIGINT NOT NULL)""",
        """CREATE INDEX IF NOT EXISTS segment_history_user
            ON segment_history (project, segment, user_id)""",
        # The due index of time boundaries: one row per (segment, user) whose
        # membership can next change at due_ms without any new event.
        """CREATE TABLE IF NOT EXISTS audience_due (
            project TEXT NOT NULL,
            segment TEXT NOT NULL,
            user_id BIGINT NOT NULL,
            due_ms BIGINT NOT NULL,
            PRIMARY KEY (project, segment, user_id))""",
        "CREATE INDEX IF NOT EXISTS audience_due_time ON audience_due (due_ms)",
    ]


STATE_SCHEMA: dict[str, list[str]] = {
    "sqlite": _tables("INTEGER PRIMARY KEY AUTOINCREMENT"),
    "postgres": _tables("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
}


@dataclass(frozen=True, slots=True)
class Segment:
    project: str
    name: str
    kind: SegmentKind
    definition: dict[str, Any] | None
    source: dict[str, Any]
    description: str
    created_ms: int
    updated_ms: int
    computed_ms: int | None
    member_count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project, "name": self.name, "kind": self.kind,
            "definition": self.definition, "source": self.source,
            "description": self.description, "created_ms": self.created_ms,
            "updated_ms": self.updated_ms, "computed_ms": self.computed_ms,
            "member_count": self.member_count,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """One enter or exit: the signal the journey engine consumes."""

    id: int
    project: str
    segment: str
    user_id: int
    change: Literal["enter", "exit"]
    at_ms: int


@dataclass(slots=True)
class _Diff:
    entered: list[int] = field(default_factory=list)
    exited: list[int] = field(default_factory=list)


_COLUMNS = (
    "project, name, kind, definition, source, description, created_ms, updated_ms, "
    "computed_ms, member_count"
)


def validate_name(name: str, field_name: str = "name") -> str:
    """Segment names are used in URLs, CLI arguments and other definitions."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(field_name, "must be a non-empty string")
    if len(name) > 200:
        raise InvalidInput(field_name, "must be at most 200 characters")
    if "/" in name or any(ord(c) < 32 for c in name):
        raise InvalidInput(field_name, "must not contain '/' or control characters")
    return name


def _row_to_segment(row: Sequence[Any]) -> Segment:
    definition = orjson.loads(row[3]) if row[3] is not None else None
    return Segment(
        project=row[0], name=row[1], kind=row[2], definition=definition,
        source=orjson.loads(row[4]), description=row[5], created_ms=int(row[6]),
        updated_ms=int(row[7]), computed_ms=None if row[8] is None else int(row[8]),
        member_count=int(row[9]),
    )


def get_segment(tx: Tx, project: str, name: str) -> Segment:
    row = tx.fetchone(
        f"SELECT {_COLUMNS} FROM segments WHERE project = ? AND name = ?", (project, name)
    )
    if row is None:
        raise NotFound(f"segment {name!r} in project {project!r}")
    return _row_to_segment(row)


def list_segments(tx: Tx, project: str, kind: SegmentKind | None = None) -> list[Segment]:
    if kind is None:
        rows = tx.fetchall(
            f"SELECT {_COLUMNS} FROM segments WHERE project = ? ORDER BY name", (project,)
        )
    else:
        rows = tx.fetchall(
            f"SELECT {_COLUMNS} FROM segments WHERE project = ? AND kind = ? ORDER BY name",
            (project, kind),
        )
    return [_row_to_segment(r) for r in rows]


def member_ids(tx: Tx, project: str, segment: str) -> set[int]:
    rows = tx.fetchall(
        "SELECT user_id FROM segment_members WHERE project = ? AND segment = ?",
        (project, segment),
    )
    return {int(r[0]) for r in rows}


def members_of(
    tx: Tx, project: str, segment: str, *, limit: int | None = None, after_user: int | None = None
) -> list[tuple[int, int]]:
    """Members as (user_id, since_ms), by user id; page with ``after_user``."""
    sql = "SELECT user_id, since_ms FROM segment_members WHERE project = ? AND segment = ?"
    params: list[Any] = [project, segment]
    if after_user is not None:
        sql += " AND user_id > ?"
        params.append(after_user)
    sql += " ORDER BY user_id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return [(int(r[0]), int(r[1])) for r in tx.fetchall(sql, params)]


def _upsert(
    tx: Tx, project: str, name: str, kind: SegmentKind, definition: dict[str, Any] | None,
    source: dict[str, Any], description: str, now_ms: int,
) -> None:
    existing = tx.fetchone(
        "SELECT kind FROM segments WHERE project = ? AND name = ?", (project, name)
    )
    if existing is not None and existing[0] != kind:
        raise Conflict(f"segment {name!r} exists already as a {existing[0]} segment")
    definition_text = None if definition is None else orjson.dumps(definition).decode()
    source_text = orjson.dumps(source).decode()
    if existing is None:
        tx.execute(
            f"INSERT INTO segments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, 0)",
            (project, name, kind, definition_text, source_text, description, now_ms, now_ms),
        )
    else:
        tx.execute(
            "UPDATE segments SET definition = ?, source = ?, description = ?, updated_ms = ? "
            "WHERE project = ? AND name = ?",
            (definition_text, source_text, description, now_ms, project, name),
        )


def apply_changes(
    tx: Tx, project: str, segment: str, entered: Iterable[int], exited: Iterable[int],
    at_ms: int, *, computed: bool = False,
) -> None:
    """Record enters and exits: members, history rows and the member count.

    The caller has worked out the difference against the current members; a user
    in ``entered`` must not be a member yet and one in ``exited`` must be one.
    """
    entered = list(entered)
    exited = list(exited)
    if exited:
        tx.executemany(
            "DELETE FROM segment_members WHERE project = ? AND segment = ? AND user_id = ?",
            [(project, segment, u) for u in exited],
        )
    if entered:
        tx.executemany(
            "INSERT INTO segment_members (project, segment, user_id, since_ms) "
            "VALUES (?, ?, ?, ?)",
            [(project, segment, u, at_ms) for u in entered],
        )
    if entered or exited:
        tx.executemany(
            "INSERT INTO segment_history (project, segment, user_id, change, at_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            [(project, segment, u, "enter", at_ms) for u in entered]
            + [(project, segment, u, "exit", at_ms) for u in exited],
        )
    delta = len(entered) - len(exited)
    if computed:
        tx.execute(
            "UPDATE segments SET member_count = member_count + ?, computed_ms = ? "
            "WHERE project = ? AND name = ?",
            (delta, at_ms, project, segment),
        )
    elif delta:
        tx.execute(
            "UPDATE segments SET member_count = member_count + ? WHERE project = ? AND name = ?",
            (delta, project, segment),
        )


def replace_members(
    tx: Tx, project: str, segment: str, users: Iterable[int], at_ms: int
) -> _Diff:
    """Make ``users`` the members of ``segment``, recording only the difference."""
    wanted = {int(u) for u in users}
    current = member_ids(tx, project, segment)
    diff = _Diff(entered=sorted(wanted - current), exited=sorted(current - wanted))
    apply_changes(tx, project, segment, diff.entered, diff.exited, at_ms, computed=True)
    return diff


def _user_ids(user_ids: Iterable[Any]) -> list[int]:
    out: list[int] = []
    for i, raw in enumerate(user_ids):
        if isinstance(raw, bool):
            raise InvalidInput(f"user_ids[{i}]", "must be an integer user id")
        try:
            out.append(int(raw))
        except (TypeError, ValueError):
            raise InvalidInput(f"user_ids[{i}]", "must be an integer user id") from None
    return out


def save_static_segment(
    tx: Tx,
    project: str,
    name: str,
    user_ids: Iterable[int],
    source: dict[str, Any],
    *,
    description: str = "",
    now_ms: int | None = None,
) -> Segment:
    """Save ``user_ids`` as the static segment ``name`` (created or replaced).

    ``source`` says where the list came from, for example
    ``{"analysis": "rfm", "layer": "high value", "date": "2026-11-01"}`` or
    ``{"csv": "members.csv"}``; it is kept as given. Saving again under the same
    name replaces the members and records who entered and who left. A dynamic
    segment of that name is a :class:`Conflict`.
    """
    validate_name(name)
    if not isinstance(source, dict):
        raise InvalidInput("source", "must be an object")
    users = _user_ids(user_ids)
    at = SystemClock().now_ms() if now_ms is None else now_ms
    _upsert(tx, project, name, "static", None, source, description, at)
    replace_members(tx, project, name, users, at)
    return get_segment(tx, project, name)


def save_dynamic_segment(
    tx: Tx, project: str, name: str, definition: dict[str, Any], *,
    description: str = "", now_ms: int,
) -> Segment:
    """Create or update a dynamic segment's definition (validated by the caller).

    Its members are filled in by the audience engine (batch compute, then real time).
    """
    validate_name(name)
    _upsert(tx, project, name, "dynamic", definition, {"definition": True}, description, now_ms)
    return get_segment(tx, project, name)


def delete_segment(tx: Tx, project: str, name: str) -> None:
    """Delete a segment and its members (its history stays). Refused (Conflict)
    while another segment's definition refers to it."""
    get_segment(tx, project, name)
    for other in list_segments(tx, project, "dynamic"):
        if other.name != name and _refers_to(other.definition, name):
            raise Conflict(f"segment {other.name!r} uses {name!r}; change or delete it first")
    for table, column in (
        ("segment_members", "segment"), ("audience_due", "segment"), ("segments", "name"),
    ):
        tx.execute(f"DELETE FROM {table} WHERE project = ? AND {column} = ?", (project, name))


def _refers_to(node: Any, name: str) -> bool:
    if isinstance(node, dict):
        if node.get("in_segment") == name or node.get("not_in_segment") == name:
            return True
        return any(_refers_to(v, name) for v in node.values())
    if isinstance(node, list):
        return any(_refers_to(v, name) for v in node)
    return False


def history(
    tx: Tx, project: str, segment: str, user_id: int | None = None, limit: int = 1000
) -> list[Change]:
    """Enter/exit rows of a segment (optionally one user), oldest first."""
    sql = (
        "SELECT id, project, segment, user_id, change, at_ms FROM segment_history "
        "WHERE project = ? AND segment = ?"
    )
    params: list[Any] = [project, segment]
    if user_id is not None:
        sql += " AND user_id = ?"
        params.append(user_id)
    sql += " ORDER BY id LIMIT ?"
    params.append(limit)
    return [_change(r) for r in tx.fetchall(sql, params)]


def signals_after(tx: Tx, after_id: int, limit: int = 10_000) -> list[Change]:
    """Every enter/exit (all projects, all segments) with an id above ``after_id``."""
    rows = tx.fetchall(
        "SELECT id, project, segment, user_id, change, at_ms FROM segment_history "
        "WHERE id > ? ORDER BY id LIMIT ?",
        (after_id, limit),
    )
    return [_change(r) for r in rows]


def _change(r: Sequence[Any]) -> Change:
    return Change(
        id=int(r[0]), project=r[1], segment=r[2], user_id=int(r[3]), change=r[4],
        at_ms=int(r[5]),
    )

