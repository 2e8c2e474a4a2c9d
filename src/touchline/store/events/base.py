"""The event-store interface and the parts every backend shares.

A backend supplies storage (commit, offsets, replica), a way to run SQL into Arrow
with a time limit, and its :class:`~touchline.store.events.sql.StoreDialect`. The
query checking, project scoping, timeline and scan SQL, and the JSON-ready
conversion of results live here, once.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Protocol

import orjson
import pyarrow as pa

from ...errors import InvalidInput
from ...query import FunctionPolicy, check_query
from ..batch import IdentityRow, IngestBatch, ItemRow, ProfileRow
from .sql import (
    EVENT_COLUMNS,
    StoreDialect,
    merged_sql,
    owner_sql,
    physical_sql,
    scan_sql,
    scoped_sql,
    timeline_sql,
)

__all__ = [
    "AnalysisConnection",
    "EventStore",
    "QueryResult",
    "RunResult",
    "json_ready_rows",
]

# Internal SQL (scan, analysis code) is written by Touchline itself: the table rules
# still apply (it reads the views), the function allow-list does not.
_INTERNAL_FUNCTIONS = FunctionPolicy(untyped=frozenset(), any_function=True)


@dataclass
class QueryResult:
    """A query's result, ready for JSON: timestamps as ISO text, JSON parsed."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False  # more rows existed than max_rows

    def as_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "truncated": self.truncated}

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class AnalysisConnection(Protocol):
    """What the analysis engine gets: trusted SQL over one project's views."""

    dialect: str

    def arrow(self, sql: str) -> pa.Table:
        """Run SQL that reads `events`, `profiles`, `identities`, `items`."""
        ...


@dataclass
class RunResult:
    table: pa.Table
    json_columns: set[int] = field(default_factory=set)  # indices holding JSON text
    truncated: bool = False


class EventStore(ABC):
    """The analytical store of events plus a replica of profiles, identities, items.

    Writes come from one thread (the ingest pipeline); reads from any thread.
    """

    dialect: ClassVar[StoreDialect]

    # -- writing --------------------------------------------------------------------

    @abstractmethod
    def commit_batch(self, batch: IngestBatch, *, offset_name: str | None = "ingest") -> None:
        """Append events, upsert the replica and user map, set the offset named
        ``offset_name`` to ``batch.offset`` (None: leave offsets alone, as a bulk
        import does): all in one transaction."""

    @abstractmethod
    def replace_replica(
        self,
        project: str,
        profiles: Iterable[ProfileRow],
        identities: Iterable[IdentityRow],
        items: Iterable[ItemRow],
        *,
        user_map: Mapping[int, int] | None = None,
    ) -> None:
        """Replace the project's replica tables (and its user map when given)."""

    @abstractmethod
    def get_offset(self, name: str = "ingest") -> int:
        """The named offset, 0 when never set."""

    @abstractmethod
    def recent_event_ids(self, since_ms: int) -> pa.Table:
        """(project, event_id) of the events received at or after ``since_ms``."""

    @abstractmethod
    def close(self) -> None: ...

    # -- reading --------------------------------------------------------------------

    @abstractmethod
    def _run(self, sql: str, *, timeout_s: float | None, max_rows: int | None) -> RunResult:
        """Run backend SQL; raise QueryTimeout past the limit, QueryError on failure."""

    @abstractmethod
    def connection_for_analysis(self, project: str) -> AbstractContextManager[AnalysisConnection]:
        """A connection whose `events`/`profiles`/... are the project's views."""

    def query(self, project: str, sql: str, *, timeout_s: float, max_rows: int) -> QueryResult:
        """Run a user's read-only query in one project."""
        checked = check_query(sql, dialect=self.dialect.name, functions=self.dialect.functions)
        result = self._run(
            scoped_sql(checked, project, self.dialect), timeout_s=timeout_s, max_rows=max_rows
        )
        return QueryResult(
            columns=list(result.table.column_names),
            rows=json_ready_rows(result.table, result.json_columns),
            truncated=result.truncated,
        )

    def arrow(self, project: str, sql: str, *, timeout_s: float) -> pa.Table:
        """Like :meth:`query`, for the Python API: the whole result as Arrow."""
        checked = check_query(sql, dialect=self.dialect.name, functions=self.dialect.functions)
        return self._run(
            scoped_sql(checked, project, self.dialect), timeout_s=timeout_s, max_rows=None
        ).table

    def internal_sql(self, project: str, sql: str) -> str:
        """Trusted SQL in DuckDB dialect over the views, scoped and written for this
        backend (analysis code uses it; user input must go through :meth:`query`)."""
        checked = check_query(sql, dialect="duckdb", functions=_INTERNAL_FUNCTIONS)
        return scoped_sql(checked, project, self.dialect)

    def timeline(
        self, project: str, user_id: int, *, limit: int, before_ms: int | None = None
    ) -> QueryResult:
        """The user's events newest first, with every profile merged into it."""
        uid = int(user_id)
        owner = self._run(self._physical(owner_sql(project, uid)), timeout_s=None,
                          max_rows=1).table
        if owner.num_rows:  # a merged-away profile: show its survivor's timeline
            uid = int(owner.column(0)[0].as_py())
        merged = self._run(self._physical(merged_sql(project, uid)), timeout_s=None,
                           max_rows=None).table
        ids = [uid, *(int(v) for v in merged.column(0).to_pylist())]
        sql = timeline_sql(project, uid, ids, limit=limit, before_ms=before_ms)
        result = self._run(self._physical(sql), timeout_s=None, max_rows=None)
        json_cols = result.json_columns or {result.table.column_names.index("properties")}
        return QueryResult(
            columns=list(result.table.column_names),
            rows=json_ready_rows(result.table, json_cols),
        )

    def scan(
        self,
        project: str,
        columns: Sequence[str],
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        events: Collection[str] | None = None,
    ) -> pa.Table:
        """Stitched events of a project as Arrow, ordered by (user_id, time)."""
        for i, col in enumerate(columns):
            if col not in EVENT_COLUMNS:
                raise InvalidInput(f"columns[{i}]", f"one of {', '.join(EVENT_COLUMNS)}")
        sql = scan_sql(columns, start_ms=start_ms, end_ms=end_ms, events=events)
        return self._run(self.internal_sql(project, sql), timeout_s=None, max_rows=None).table

    def _physical(self, sql: str) -> str:
        return physical_sql(sql, self.dialect)


# -- JSON-ready results -----------------------------------------------------------------


def json_ready_rows(table: pa.Table, json_columns: Collection[int]) -> list[list[Any]]:
    columns: list[list[Any]] = []
    for index in range(table.num_columns):
        values = table.column(index).to_pylist()
        if index in json_columns:
            columns.append([None if v is None else _parse_json(v) for v in values])
        else:
            columns.append([_plain(v) for v in values])
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def _parse_json(text: Any) -> Any:
    try:
        return orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return text


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:  # stored timestamps are UTC
            return v.isoformat(timespec="milliseconds") + "Z"
        return v.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, Decimal):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v)
