"""The ClickHouse event store, run in-process through chDB (a session with a path).

The same :class:`~touchline.store.events.base.EventStore` as the DuckDB backend:
the shared code generates the view SQL in the ClickHouse dialect with sqlglot. What
differs lives here:

- No multi-statement transactions. Each commit gets a sequence number stored on its
  events; the commit's last write is one INSERT of the offset rows with that number.
  On open, events of a commit whose offsets never landed are deleted, so a crash in
  the middle of a commit leaves nothing behind (replica upserts are idempotent, the
  ingest pipeline replays them).
- Upserts are a lightweight DELETE of the staged keys followed by an INSERT. Keys are
  staged in a Memory table first: a DELETE reading chDB's ``Python()`` table function
  waits forever for the GIL.
- A LEFT JOIN fills missing rows with defaults unless ``join_use_nulls = 1``; queries
  run with it, and with ``max_execution_time`` as their time limit.
- Results come back as Arrow with UTC timestamps; they are made naive UTC, as DuckDB's
  are. ClickHouse has no JSON result type here: a String column named ``properties``
  is read as JSON.

One lock serializes the session: chDB runs one query at a time per session anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from ...errors import QueryError, QueryTimeout, StoreError
from ...query import FunctionPolicy, check_query
from ..batch import IdentityRow, IngestBatch, ItemRow, ProfileRow
from . import replica
from .base import AnalysisConnection, EventStore, RunResult
from .sql import StoreDialect, scoped_sql

__all__ = ["CLICKHOUSE_DIALECT", "ClickHouseAnalysisConnection", "ClickHouseEventStore"]

# Pure ClickHouse functions sqlglot leaves untyped (no file, url, dictionary, table,
# settings or system access).
_UNTYPED = frozenset("""
    arrayjoin countif sumif avgif uniq uniqexact uniqif argmax argmin groupArray
    groupuniqarray todate todatetime todatetime64 tostartofday tostartofweek
    tostartofmonth tostartofhour tounixtimestamp tounixtimestamp64milli
    fromunixtimestamp64milli tostring toint64 tofloat64 touint64 tostartofinterval
    jsonextractstring jsonextractint jsonextractfloat jsonextractbool jsonextractraw
    jsonhas jsonlength jsonextractkeys visitparamextractstring windowfunnel retention
    sequencematch sequencecount datediff dateadd datesub formatdatetime totimezone
    arrayfilter arraymap arraysort arraydistinct arrayenumerate has hasany hasall
    length empty notempty multiif ifnull coalesce splitbychar lowerutf8 upperutf8
    positionutf8 match extract replaceall replaceregexpall quantile quantiles median
""".lower().split())

CLICKHOUSE_DIALECT = StoreDialect(
    name="clickhouse",
    functions=FunctionPolicy(untyped=_UNTYPED, table_functions=frozenset({"numbers"})),
    not_materialized_ctes=False,
)

_TS = "DateTime64(3, 'UTC')"
_DDL = (
    "CREATE TABLE IF NOT EXISTS tl_events (project String, event_id String, event String,"
    f" profile_id Int64, distinct_id String, time {_TS}, received_at {_TS}, source String,"
    " properties String, _commit UInt64)"
    " ENGINE = MergeTree ORDER BY (project, profile_id, time)",
    "CREATE TABLE IF NOT EXISTS tl_profiles (project String, user_id Int64,"
    f" properties String, first_seen Nullable({_TS}), last_seen Nullable({_TS}),"
    " event_count Int64) ENGINE = MergeTree ORDER BY (project, user_id)",
    "CREATE TABLE IF NOT EXISTS tl_identities (project String, id_type String,"
    " id_value String, user_id Int64) ENGINE = MergeTree ORDER BY (project, id_type, id_value)",
    "CREATE TABLE IF NOT EXISTS tl_items (project String, item_type String, item_id String,"
    f" properties Nullable(String), updated_at {_TS})"
    " ENGINE = MergeTree ORDER BY (project, item_type, item_id)",
    "CREATE TABLE IF NOT EXISTS tl_user_map (project String, profile_id Int64, user_id Int64)"
    " ENGINE = MergeTree ORDER BY (project, profile_id)",
    "CREATE TABLE IF NOT EXISTS tl_offsets (name String, value Int64, seq UInt64)"
    " ENGINE = MergeTree ORDER BY (name, seq)",
)

_REPLICA: dict[str, tuple[tuple[str, ...], str]] = {
    "tl_profiles": (("project", "user_id"),
                    "project, user_id, properties, first_seen, last_seen, event_count"),
    "tl_identities": (("project", "id_type", "id_value"),
                      "project, id_type, id_value, user_id"),
    "tl_items": (("project", "item_type", "item_id"),
                 "project, item_type, item_id, properties, updated_at"),
    "tl_user_map": (("project", "profile_id"), "project, profile_id, user_id"),
}
# Memory tables the keys of an upsert are staged in.
_KEY_STAGES: dict[str, str] = {
    "tl_profiles": "project String, user_id Int64",
    "tl_identities": "project String, id_type String, id_value String",
    "tl_items": "project String, item_type String, item_id String",
    "tl_user_map": "project String, profile_id Int64",
}
_COMMIT = "__commit"


class ClickHouseEventStore(EventStore):
    dialect: ClassVar[StoreDialect] = CLICKHOUSE_DIALECT

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        from chdb import session  # an optional dependency: imported only when used

        self._read_only = read_only
        self._lock = threading.RLock()
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            make_session: Any = session.Session  # chdb ships no type hints
            self._session: Any = make_session(str(path))
            for statement in _DDL:
                self._session.query(statement)
            for table, columns in _KEY_STAGES.items():
                self._session.query(
                    f"CREATE TABLE IF NOT EXISTS stage_{table} ({columns}) ENGINE = Memory")
            self._seq = self._scalar(f"SELECT max(seq) FROM tl_offsets WHERE name = '{_COMMIT}'")
            if not read_only:
                # Events of a commit that never finished: see the module docstring.
                self._session.query(f"DELETE FROM tl_events WHERE _commit > {self._seq}")
        except Exception as exc:
            raise StoreError(f"cannot open ClickHouse event store {path}: {exc}") from exc
        self._closed = False

    # -- writing ----------------------------------------------------------------------

    def commit_batch(self, batch: IngestBatch, *, offset_name: str | None = "ingest") -> None:
        if self._read_only:
            raise StoreError("the event store was opened read-only")
        with self._lock:
            seq = self._seq + 1
            try:
                staged = {
                    "tl_profiles": replica.profiles_table(batch.profiles),
                    "tl_identities": replica.identities_table(batch.identities),
                    "tl_items": replica.items_table(batch.items),
                    "tl_user_map": replica.user_map_table(batch.user_map),
                }
                if batch.events.num_rows:
                    events = batch.events.append_column(
                        "_commit", pa.array([seq] * batch.events.num_rows, pa.uint64()))
                    self._insert_arrow("tl_events", events, "*")
                for table, rows in staged.items():
                    self._upsert(table, rows)
                names = [_COMMIT] + ([offset_name] if offset_name is not None else [])
                values = [seq] + ([int(batch.offset)] if offset_name is not None else [])
                self._insert_arrow("tl_offsets", pa.table({
                    "name": names, "value": pa.array(values, pa.int64()),
                    "seq": pa.array([seq] * len(names), pa.uint64())}), "*")
            except Exception as exc:
                self._undo(seq)
                raise StoreError(f"event store write failed: {exc}") from exc
            self._seq = seq

    def replace_replica(
        self,
        project: str,
        profiles: Iterable[ProfileRow],
        identities: Iterable[IdentityRow],
        items: Iterable[ItemRow],
        *,
        user_map: Mapping[int, int] | None = None,
    ) -> None:
        if self._read_only:
            raise StoreError("the event store was opened read-only")
        tables = ["tl_profiles", "tl_identities", "tl_items"]
        if user_map is not None:
            tables.append("tl_user_map")
        with self._lock:
            try:
                for table in tables:
                    self._session.query(
                        f"DELETE FROM {table} WHERE project = {_quote(project)}")
                for profile_rows in replica.chunked(profiles):
                    self._insert_kept("tl_profiles", replica.profiles_table(profile_rows))
                for identity_rows in replica.chunked(identities):
                    self._insert_kept("tl_identities", replica.identities_table(identity_rows))
                for item_rows in replica.chunked(items):
                    self._insert_kept("tl_items", replica.items_table(item_rows))
                if user_map is not None:
                    mapping = {(project, int(k)): int(v) for k, v in user_map.items()}
                    self._insert_kept("tl_user_map", replica.user_map_table(mapping))
            except Exception as exc:
                raise StoreError(f"replica rebuild failed: {exc}") from exc

    def get_offset(self, name: str = "ingest") -> int:
        with self._lock:
            return self._scalar(
                f"SELECT argMax(value, seq) FROM tl_offsets WHERE name = {_quote(name)}")

    def recent_event_ids(self, since_ms: int) -> pa.Table:
        return self._arrow(
            "SELECT project, event_id FROM tl_events"
            f" WHERE received_at >= fromUnixTimestamp64Milli(toInt64({int(since_ms)}))")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()

    def _undo(self, seq: int) -> None:
        try:
            self._session.query(f"DELETE FROM tl_events WHERE _commit = {seq}")
        except Exception:  # the next open cleans up what this could not
            pass

    def _insert_arrow(self, table: str, staged: pa.Table, columns: str) -> None:
        # chDB's Python() table function finds `staged` among this frame's locals.
        self._session.query(f"INSERT INTO {table} SELECT {columns} FROM Python(staged)")

    def _upsert(self, table: str, staged: pa.Table) -> None:
        if not staged.num_rows:
            return
        keys, _ = _REPLICA[table]
        key_list = ", ".join(keys)
        keys_only = staged.select(list(keys))  # noqa: F841 - read by Python() below
        stage = f"stage_{table}"
        self._session.query(f"TRUNCATE TABLE {stage}")
        self._session.query(f"INSERT INTO {stage} ({key_list}) SELECT * FROM Python(keys_only)")
        self._session.query(
            f"DELETE FROM {table} WHERE ({key_list}) IN (SELECT {key_list} FROM {stage})")
        self._insert_kept(table, staged)

    def _insert_kept(self, table: str, staged: pa.Table) -> None:
        kept = staged.filter(staged.column("keep"))
        if not kept.num_rows:
            return
        _, select = _REPLICA[table]
        kept = kept.select([c.strip() for c in select.split(",")])
        # chDB's Python() table function finds `kept` among this frame's locals.
        self._session.query(f"INSERT INTO {table} SELECT * FROM Python(kept)")

    # -- reading ----------------------------------------------------------------------

    def _scalar(self, sql: str) -> int:
        table = self._arrow(sql)
        value = table.column(0)[0].as_py() if table.num_rows else None
        return int(value or 0)

    def _arrow(self, sql: str, settings: str = "") -> pa.Table:
        with self._lock:
            if getattr(self, "_closed", False):
                raise StoreError("the event store is closed")
            table = self._session.query(sql + settings, "ArrowTable")
        return _naive_utc(table)

    def _run(self, sql: str, *, timeout_s: float | None, max_rows: int | None) -> RunResult:
        settings = " SETTINGS join_use_nulls = 1"
        if timeout_s is not None:
            settings += f", max_execution_time = {max(float(timeout_s), 0.001)}"
        if max_rows is not None:
            # One row more than asked tells whether the result was cut.
            settings += f", max_result_rows = {int(max_rows) + 1}, result_overflow_mode = 'break'"
        try:
            table = self._arrow(sql, settings)
        except StoreError:
            raise
        except Exception as exc:
            text = str(exc)
            if "TIMEOUT_EXCEEDED" in text:
                raise QueryTimeout(f"timeout: the query ran past {timeout_s} s") from None
            raise QueryError(f"failed: {_first_line(text)}") from None
        truncated = max_rows is not None and table.num_rows > max_rows
        if truncated and max_rows is not None:
            table = table.slice(0, max_rows)
        json_columns = {i for i, f in enumerate(table.schema)
                        if f.name == "properties" and pa.types.is_string(f.type)}
        return RunResult(table, json_columns, truncated)

    @contextmanager
    def connection_for_analysis(self, project: str) -> Iterator[AnalysisConnection]:
        yield ClickHouseAnalysisConnection(self, project)


class ClickHouseAnalysisConnection:
    """Trusted ClickHouse SQL over one project's views (rewritten into CTEs)."""

    dialect = "clickhouse"
    _ANY = FunctionPolicy(untyped=frozenset(), any_function=True)

    def __init__(self, store: ClickHouseEventStore, project: str) -> None:
        self._store = store
        self._project = project

    def arrow(self, sql: str) -> pa.Table:
        checked = check_query(sql, dialect="clickhouse", functions=self._ANY)
        text = scoped_sql(checked, self._project, CLICKHOUSE_DIALECT)
        return self._store._run(text, timeout_s=None, max_rows=None).table


def _naive_utc(table: pa.Table) -> pa.Table:
    """UTC timestamps without a zone, and no NOT NULL flags: as DuckDB returns them."""
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_timestamp(t) and t.tz is not None:
            t = pa.timestamp(t.unit)
        fields.append(pa.field(f.name, t))
    schema = pa.schema(fields)
    if schema.equals(table.schema):
        return table
    columns = [pc.cast(table.column(i), schema.field(i).type) for i in range(table.num_columns)]
    return pa.Table.from_arrays(columns, schema=schema)


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "error"

