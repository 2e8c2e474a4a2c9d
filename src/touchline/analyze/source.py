"""Where the analysis engine reads events from: the :class:`EventSource` protocol.

The engine needs little from the event store: the stitched events of a project as
columns, in one canonical order, plus the newest ``received_at`` so a cache can fetch
only what arrived since. :class:`DuckDBEventSource` implements it over any DuckDB
connection holding tables of the event store's shape; the real store plugs in with
a thin adapter of the same protocol.

Canonical order: ``(user_id, time, event_key)`` where ``event_key`` is a 63-bit hash
of ``event_id``. The tie-break makes the order total, so a property column fetched
later lines up row for row with columns fetched earlier.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import InvalidInput, StoreError
from ..track.records import NAME_RE

__all__ = ["BASE_COLUMNS", "ArrowEventSource", "DuckDBEventSource", "EventSource", "Stamp",
           "StoreEventSource"]

# (newest received_at in ms, number of events, number of profiles): when it changes, the
# cache refreshes. The profile count moves when identities are merged or split, which
# re-attributes past events without adding any: that calls for a full reload.
Stamp = tuple[int, int, int]

BASE_COLUMNS = ("user_id", "time", "event", "event_key")


class EventSource(Protocol):
    """The stitched events and profiles of the projects, as Arrow tables."""

    def stamp(self, project: str) -> Stamp:
        """(newest ``received_at`` in ms, event count, profile count) of the project."""
        ...

    def scan(
        self,
        project: str,
        columns: Sequence[str],
        *,
        received_after_ms: int | None = None,
        received_until_ms: int | None = None,
    ) -> pa.Table:
        """Events in canonical order. Columns: ``user_id`` (int64), ``time`` (int64 ms
        UTC), ``event`` (string), ``event_key`` (int64) and ``properties.NAME`` (the
        property as a string, null when absent). ``received_*`` bound ``received_at``:
        ``after < received_at <= until``."""
        ...

    def profiles(self, project: str, properties: Sequence[str]) -> pa.Table:
        """``user_id`` plus one string column per named profile property."""
        ...


def _json_path(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidInput("property", f"{name!r} is not a valid property name")
    return f'$."{name}"'


class DuckDBEventSource:
    """An :class:`EventSource` over DuckDB tables ``events`` and ``profiles``.

    ``events_table``/``profiles_table`` may contain ``{project}``, which is replaced by
    the project name, for stores that keep one schema or table per project.
    """

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        events_table: str = "events",
        profiles_table: str = "profiles",
    ) -> None:
        self._conn = conn
        self._events = events_table
        self._profiles = profiles_table
        # A DuckDB connection is not safe to share between threads; cursors are.
        self._lock = threading.Lock()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._conn.cursor()

    def _table(self, template: str, project: str) -> str:
        if not NAME_RE.match(project.replace("-", "_")):
            raise InvalidInput("project", "is not a valid project name")
        return template.format(project=project)

    def _query(self, sql: str, params: Sequence[Any], project: str = "") -> pa.Table:
        try:
            return self._cursor().sql(sql, params=list(params)).to_arrow_table()
        except duckdb.Error as exc:
            raise StoreError(f"event source query failed: {exc}") from exc

    def stamp(self, project: str) -> Stamp:
        table = self._table(self._events, project)
        profiles = self._table(self._profiles, project)
        t = self._query(
            f"SELECT coalesce(epoch_ms(max(received_at)), 0)::BIGINT, count(*)::BIGINT, "
            f"(SELECT count(*) FROM {profiles})::BIGINT FROM {table}", [], project)
        return (int(t.column(0)[0].as_py()), int(t.column(1)[0].as_py()),
                int(t.column(2)[0].as_py()))

    def scan(
        self,
        project: str,
        columns: Sequence[str],
        *,
        received_after_ms: int | None = None,
        received_until_ms: int | None = None,
    ) -> pa.Table:
        table = self._table(self._events, project)
        exprs: list[str] = []
        params: list[Any] = []
        for col in columns:
            if col == "user_id":
                exprs.append("user_id::BIGINT AS user_id")
            elif col == "time":
                exprs.append("epoch_ms(time)::BIGINT AS time")
            elif col == "event":
                exprs.append("event")
            elif col == "event_key":
                exprs.append("(hash(event_id) >> 1)::BIGINT AS event_key")
            elif col.startswith("properties."):
                exprs.append(f'json_extract_string(properties, ?) AS "{col}"')
                params.append(_json_path(col.removeprefix("properties.")))
            else:
                raise InvalidInput("columns", f"unknown column {col!r}")
        where: list[str] = []
        if received_after_ms is not None:
            where.append("epoch_ms(received_at) > ?")
            params.append(received_after_ms)
        if received_until_ms is not None:
            where.append("epoch_ms(received_at) <= ?")
            params.append(received_until_ms)
        sql = f"SELECT {', '.join(exprs)} FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY user_id, time, (hash(event_id) >> 1)::BIGINT"
        return self._query(sql, params, project)

    def profiles(self, project: str, properties: Sequence[str]) -> pa.Table:
        table = self._table(self._profiles, project)
        exprs = ["user_id::BIGINT AS user_id"]
        params: list[Any] = []
        for name in properties:
            exprs.append(f'json_extract_string(properties, ?) AS "{name}"')
            params.append(_json_path(name))
        return self._query(f"SELECT {', '.join(exprs)} FROM {table} ORDER BY user_id", params,
                           project)


def _literal(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput("params", "only integers and strings can be inlined")
    if isinstance(value, int):
        return str(int(value))
    return "'" + value.replace("'", "''") + "'"


class StoreEventSource(DuckDBEventSource):
    """An :class:`EventSource` over Touchline's event store (``runtime.events``).

    The store hands out a connection whose ``events`` and ``profiles`` views are one
    project's stitched data; the same queries run over them.
    """

    def __init__(self, store: Any) -> None:
        super().__init__(duckdb.connect(":memory:"))
        self._store = store

    def _query(self, sql: str, params: Sequence[Any], project: str = "") -> pa.Table:
        parts = sql.split("?")
        if len(parts) != len(params) + 1:
            raise InvalidInput("params", "placeholder count does not match")
        text = parts[0] + "".join(_literal(p) + rest for p, rest in zip(params, parts[1:],
                                                                         strict=True))
        try:
            with self._store.connection_for_analysis(project) as conn:
                table: pa.Table = conn.arrow(text)
                return table
        except duckdb.Error as exc:
            raise StoreError(f"event store query failed: {exc}") from exc


class ArrowEventSource:
    """An :class:`EventSource` over Arrow tables in memory (notebooks, benchmarks).

    ``events`` has ``user_id``, ``time`` (int64 ms), ``event`` and optionally
    ``event_key`` and ``properties.NAME`` string columns; it is sorted into canonical
    order once (``presorted``: the caller says it already is). ``profiles`` has
    ``user_id`` and string property columns.
    """

    def __init__(self, events: pa.Table, profiles: pa.Table | None = None, *,
                 presorted: bool = False) -> None:
        if "event_key" not in events.column_names:
            events = events.append_column("event_key", pa.array(
                np.arange(events.num_rows, dtype=np.int64)))
        if not presorted:
            events = events.sort_by([("user_id", "ascending"), ("time", "ascending"),
                                     ("event_key", "ascending")])
        self._events = events
        self._profiles = profiles

    def stamp(self, project: str) -> Stamp:
        n_profiles = self._profiles.num_rows if self._profiles is not None else 0
        return (0, self._events.num_rows, n_profiles)

    def scan(self, project: str, columns: Sequence[str], *, received_after_ms: int | None = None,
             received_until_ms: int | None = None) -> pa.Table:
        if received_after_ms is not None:
            return self._events.select(list(columns)).slice(0, 0)
        out = []
        for col in columns:
            if col in self._events.column_names:
                out.append(self._events.column(col))
            elif col.startswith("properties."):
                out.append(pa.nulls(self._events.num_rows, pa.string()))
            else:
                raise InvalidInput("columns", f"unknown column {col!r}")
        return pa.table(out, names=list(columns))

    def profiles(self, project: str, properties: Sequence[str]) -> pa.Table:
        if self._profiles is None:
            return pa.table({"user_id": pa.array([], pa.int64()),
                             **{p: pa.array([], pa.string()) for p in properties}})
        cols = {"user_id": self._profiles.column("user_id")}
        for p in properties:
            cols[p] = (self._profiles.column(p).cast(pa.string())
                       if p in self._profiles.column_names
                       else pa.nulls(self._profiles.num_rows, pa.string()))
        return pa.table(cols)
