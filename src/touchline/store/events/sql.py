"""The SQL every event-store backend shares, and what differs, as data.

The project views are written once (DuckDB dialect, with a ``'__tl_project__'`` placeholder)
and generated for each backend with sqlglot; the golden files in tests/golden/ pin
the generated text. Each backend contributes a :class:`StoreDialect`: its sqlglot
dialect name, its DDL, and the functions user queries may call on it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from ...query import VIEW_NAMES, CheckedQuery, FunctionPolicy

__all__ = [
    "EVENT_COLUMNS",
    "VIEW_COLUMNS",
    "VIEW_TEMPLATES",
    "StoreDialect",
    "merged_sql",
    "owner_sql",
    "physical_sql",
    "project_views",
    "scan_sql",
    "scoped_sql",
    "sql_literal",
    "timeline_sql",
]

# Physical tables: tl_events, tl_profiles, tl_identities, tl_items, tl_user_map,
# tl_offsets. The `tl_` prefix keeps them apart from the view names users query.
VIEW_TEMPLATES: dict[str, str] = {
    "events": """
        SELECT e.event_id, e.event, COALESCE(m.user_id, e.profile_id) AS user_id,
               e.distinct_id, e.time, e.received_at, e.source, e.properties
        FROM tl_events AS e
        LEFT JOIN (SELECT profile_id, user_id FROM tl_user_map WHERE project = '__tl_project__') AS m
          ON m.profile_id = e.profile_id
        WHERE e.project = '__tl_project__'
    """,
    # A profile merged into another is no longer a user of its own.
    "profiles": """
        SELECT p.user_id, p.properties, p.first_seen, p.last_seen, p.event_count
        FROM tl_profiles AS p
        WHERE p.project = '__tl_project__'
          AND p.user_id NOT IN (SELECT profile_id FROM tl_user_map WHERE project = '__tl_project__')
    """,
    "identities": """
        SELECT COALESCE(m.user_id, i.user_id) AS user_id, i.id_type, i.id_value
        FROM tl_identities AS i
        LEFT JOIN (SELECT profile_id, user_id FROM tl_user_map WHERE project = '__tl_project__') AS m
          ON m.profile_id = i.user_id
        WHERE i.project = '__tl_project__'
    """,
    "items": """
        SELECT t.item_type, t.item_id, t.properties, t.updated_at
        FROM tl_items AS t
        WHERE t.project = '__tl_project__'
    """,
}

VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": ("event_id", "event", "user_id", "distinct_id", "time", "received_at",
               "source", "properties"),
    "profiles": ("user_id", "properties", "first_seen", "last_seen", "event_count"),
    "identities": ("user_id", "id_type", "id_value"),
    "items": ("item_type", "item_id", "properties", "updated_at"),
}
EVENT_COLUMNS = VIEW_COLUMNS["events"]

PROJECT_SENTINEL = "__tl_project__"
_PARSED = {name: sqlglot.parse_one(text, read="duckdb") for name, text in VIEW_TEMPLATES.items()}


@dataclass(frozen=True)
class StoreDialect:
    """What one backend's SQL looks like: the data behind the shared code."""

    name: str  # the sqlglot dialect
    functions: FunctionPolicy
    not_materialized_ctes: bool  # supports `AS NOT MATERIALIZED` on CTEs


def project_views(project: str) -> dict[str, exp.Query]:
    """The four views, filtered to ``project`` (bound as a literal, safely quoted)."""
    out: dict[str, exp.Query] = {}
    for name in VIEW_NAMES:
        tree = _PARSED[name].copy()
        for lit in list(tree.find_all(exp.Literal)):
            if lit.is_string and lit.this == PROJECT_SENTINEL:
                lit.replace(exp.Literal.string(project))
        assert isinstance(tree, exp.Query)
        out[name] = tree
    return out


def scoped_sql(checked: CheckedQuery, project: str, dialect: StoreDialect) -> str:
    """The SQL a backend runs for a checked user query in one project."""
    return checked.bind(
        project_views(project), not_materialized=dialect.not_materialized_ctes, write=dialect.name
    )


def sql_literal(value: str | int | float | None) -> str:
    """A value as a safely quoted SQL literal (DuckDB dialect, transpiled later)."""
    return exp.convert(value).sql(dialect="duckdb")


def physical_sql(sql: str, dialect: StoreDialect) -> str:
    """Trusted DuckDB-dialect SQL over the physical tables, written for ``dialect``."""
    if dialect.name == "duckdb":
        return sql
    return sqlglot.transpile(sql, read="duckdb", write=dialect.name)[0]


# Internal SQL, written in DuckDB dialect: over the physical tables (timeline) or
# over the views (scan). Golden files pin what each backend runs.


def owner_sql(project: str, profile_id: int) -> str:
    """The survivor a profile was merged into (no row: it is its own)."""
    return (f"SELECT user_id FROM tl_user_map WHERE project = {sql_literal(project)}"
            f" AND profile_id = {int(profile_id)}")


def merged_sql(project: str, user_id: int) -> str:
    """The profiles merged into ``user_id``."""
    return (f"SELECT profile_id FROM tl_user_map WHERE project = {sql_literal(project)}"
            f" AND user_id = {int(user_id)}")


def timeline_sql(
    project: str, user_id: int, profile_ids: Sequence[int], *, limit: int,
    before_ms: int | None = None,
) -> str:
    """A user's events newest first: the events of every profile merged into them."""
    where = [f"e.project = {sql_literal(project)}",
             f"e.profile_id IN ({', '.join(str(int(i)) for i in profile_ids)})"]
    if before_ms is not None:
        where.append(f"e.time < epoch_ms({int(before_ms)})")
    return (
        f"SELECT e.event_id, e.event, {int(user_id)} AS user_id, e.distinct_id, e.time,"
        f" e.received_at, e.source, e.properties FROM tl_events AS e"
        f" WHERE {' AND '.join(where)}"
        f" ORDER BY e.time DESC, e.event_id DESC LIMIT {max(0, int(limit))}"
    )


def scan_sql(
    columns: Sequence[str], *, start_ms: int | None = None, end_ms: int | None = None,
    events: Collection[str] | None = None,
) -> str:
    """Columns of the `events` view ordered by (user_id, time); columns are checked
    by the caller against :data:`EVENT_COLUMNS`."""
    cols = ", ".join(columns) if columns else "user_id, time"
    where = []
    if start_ms is not None:
        where.append(f"time >= epoch_ms({int(start_ms)})")
    if end_ms is not None:
        where.append(f"time < epoch_ms({int(end_ms)})")
    if events is not None:
        names = [sql_literal(str(e)) for e in events]
        where.append(f"event IN ({', '.join(names)})" if names else "FALSE")
    sql = f"SELECT {cols} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY user_id, time, event_id"
