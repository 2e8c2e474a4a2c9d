"""The embedded event store: one DuckDB file, ``data_dir/events.duckdb``.

The server process owns the file. The ingest thread writes through its own cursor,
one transaction per batch, under a lock; every read runs on a fresh cursor (a
separate DuckDB connection to the same database), so readers see committed
snapshots and never block the writer. External access (files, URLs, extensions,
Python replacement scans) is switched off for the whole database when it is opened:
a second line of defence behind the query allow-list.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pyarrow as pa

from ...errors import ConfigError, QueryError, QueryTimeout, StoreError
from ...query import FunctionPolicy
from ..batch import IdentityRow, IngestBatch, ItemRow, ProfileRow
from . import replica
from .base import AnalysisConnection, EventStore, RunResult
from .sql import VIEW_TEMPLATES, StoreDialect, project_views

__all__ = ["DUCKDB_DIALECT", "DuckDBAnalysisConnection", "DuckDBEventStore"]

# Pure DuckDB functions that sqlglot does not parse into a type. Anything reading
# files, URLs, the catalog, settings or variables is absent on purpose.
_UNTYPED = frozenset("""
    age array_position array_to_string ascii atan2 bit_count bit_length cardinality
    cbrt century chr count_if countif damerau_levenshtein date_part datepart datesub
    decade degrees editdist3 entropy epoch_ns epoch_us era even factorial favg fsum
    gamma gcd geomean hamming hash histogram iff instr isfinite isinf isnan jaccard
    jaro_similarity jaro_winkler_similarity json_array_length json_contains json_exists
    json_group_array json_group_object json_merge_patch json_pretty json_structure
    json_transform json_valid json_value julian kahan_sum lcm levenshtein lgamma
    list_aggregate list_any_value list_append list_avg list_count list_extract
    list_first list_grade_up list_indexof list_last list_max list_min list_position
    list_prepend list_reduce list_reverse list_slice list_sum list_unique list_where
    list_zip mad map_entries map_extract map_values max_by microsecond millennium
    millisecond min_by nanosecond nfc_normalize now octet_length pi printf product
    quarter radians regexp_extract_all regexp_full_match regexp_split_to_array
    regr_slope regr_intercept regr_r2 reservoir_quantile row sha1 sha256 strlen
    str_split string_split_regex string_to_array strip_accents sumkahan timezone
    timezone_hour timezone_minute to_hours to_json to_microseconds to_milliseconds
    to_minutes to_months to_seconds to_weeks to_years weekday weekofyear yearweek
    approx_quantile approx_top_k arbitrary bitstring_agg date_sub dayofmonth
""".split())

DUCKDB_DIALECT = StoreDialect(
    name="duckdb",
    functions=FunctionPolicy(
        untyped=_UNTYPED, table_functions=frozenset({"generate_series", "range", "unnest"})
    ),
    not_materialized_ctes=True,
)

_DDL = (
    "CREATE TABLE IF NOT EXISTS tl_events (project VARCHAR NOT NULL,"
    " event_id VARCHAR NOT NULL, event VARCHAR, profile_id BIGINT, distinct_id VARCHAR,"
    " time TIMESTAMP, received_at TIMESTAMP, source VARCHAR, properties JSON)",
    "CREATE TABLE IF NOT EXISTS tl_profiles (project VARCHAR NOT NULL, user_id BIGINT NOT NULL,"
    " properties JSON, first_seen TIMESTAMP, last_seen TIMESTAMP, event_count BIGINT)",
    "CREATE TABLE IF NOT EXISTS tl_identities (project VARCHAR NOT NULL,"
    " id_type VARCHAR NOT NULL, id_value VARCHAR NOT NULL, user_id BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tl_items (project VARCHAR NOT NULL, item_type VARCHAR NOT NULL,"
    " item_id VARCHAR NOT NULL, properties JSON, updated_at TIMESTAMP)",
    "CREATE TABLE IF NOT EXISTS tl_user_map (project VARCHAR NOT NULL,"
    " profile_id BIGINT NOT NULL, user_id BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tl_offsets (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
)

# Replica tables: their key columns, and the SELECT list that loads a staged Arrow
# table (see replica.py) into them.
_REPLICA: dict[str, tuple[tuple[str, ...], str]] = {
    "tl_profiles": (("project", "user_id"),
                    "project, user_id, properties, first_seen, last_seen, event_count"),
    "tl_identities": (("project", "id_type", "id_value"),
                      "project, id_type, id_value, user_id"),
    "tl_items": (("project", "item_type", "item_id"),
                 "project, item_type, item_id, properties, updated_at"),
    "tl_user_map": (("project", "profile_id"), "project, profile_id, user_id"),
}

_STAGE = "__tl_stage"
_ARROW_BATCH_ROWS = 8192


class DuckDBEventStore(EventStore):
    dialect: ClassVar[StoreDialect] = DUCKDB_DIALECT

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        memory_limit: str = "",
        threads: int = 0,
    ) -> None:
        self._path = str(path)
        self._read_only = read_only
        config: dict[str, Any] = {
            "enable_external_access": False,
            "python_enable_replacements": False,
        }
        # DuckDB's default buffer pool is 80% of the machine's memory: it keeps every
        # block it has written or read cached, so resident memory grows with the events
        # stored. A limit makes it evict clean blocks (they are on disk) and spill large
        # query state to its temp directory instead.
        if memory_limit:
            config["memory_limit"] = memory_limit
        if threads < 0:
            raise ConfigError(f"duckdb_threads: must be 0 (one per core) or more, got {threads}")
        if threads > 0:
            config["threads"] = threads
        try:
            self._con = duckdb.connect(self._path, read_only=read_only, config=config)
        except duckdb.Error as exc:
            _check_memory_limit(memory_limit)
            raise StoreError(f"cannot open event store {self._path}: {exc}") from exc
        try:
            if not read_only:
                for statement in _DDL:
                    self._con.execute(statement)
            # Settings are locked once the schema exists: queries cannot change them.
            self._con.execute("SET lock_configuration = true")
        except duckdb.Error as exc:
            raise StoreError(f"cannot open event store {self._path}: {exc}") from exc
        self._writer = self._con.cursor()
        self._write_lock = threading.Lock()
        self._closed = False

    # -- writing ----------------------------------------------------------------------

    def commit_batch(self, batch: IngestBatch, *, offset_name: str | None = "ingest") -> None:
        with self._write_lock, self._transaction() as cur:
            if batch.events.num_rows:
                self._append_events(cur, batch.events)
            self._upsert(cur, "tl_profiles", replica.profiles_table(batch.profiles))
            self._upsert(cur, "tl_identities", replica.identities_table(batch.identities))
            self._upsert(cur, "tl_items", replica.items_table(batch.items))
            self._upsert(cur, "tl_user_map", replica.user_map_table(batch.user_map))
            if offset_name is not None:
                cur.execute(
                    "INSERT INTO tl_offsets VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    [offset_name, int(batch.offset)],
                )

    def replace_replica(
        self,
        project: str,
        profiles: Iterable[ProfileRow],
        identities: Iterable[IdentityRow],
        items: Iterable[ItemRow],
        *,
        user_map: Mapping[int, int] | None = None,
    ) -> None:
        tables = ["tl_profiles", "tl_identities", "tl_items"]
        if user_map is not None:
            tables.append("tl_user_map")
        with self._write_lock, self._transaction() as cur:
            for table in tables:
                cur.execute(f"DELETE FROM {table} WHERE project = ?", [project])
            for profile_rows in replica.chunked(profiles):
                self._insert(cur, "tl_profiles", replica.profiles_table(profile_rows))
            for identity_rows in replica.chunked(identities):
                self._insert(cur, "tl_identities", replica.identities_table(identity_rows))
            for item_rows in replica.chunked(items):
                self._insert(cur, "tl_items", replica.items_table(item_rows))
            if user_map is not None:
                mapping = {(project, int(k)): int(v) for k, v in user_map.items()}
                self._insert(cur, "tl_user_map", replica.user_map_table(mapping))

    def get_offset(self, name: str = "ingest") -> int:
        row = self._read("SELECT value FROM tl_offsets WHERE name = ?", [name]).fetchone()
        return int(row[0]) if row else 0

    def recent_event_ids(self, since_ms: int) -> pa.Table:
        cur = self._cursor()
        try:
            return cur.sql(
                "SELECT project, event_id FROM tl_events WHERE received_at >= epoch_ms($since)",
                params={"since": int(since_ms)},
            ).to_arrow_table()
        finally:
            cur.close()

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
            self._con.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._read_only:
            raise StoreError("the event store was opened read-only")
        cur = self._writer
        cur.execute("BEGIN TRANSACTION")
        try:
            yield cur
        except BaseException as exc:
            cur.execute("ROLLBACK")
            if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                raise StoreError(f"event store write failed: {exc}") from exc
            raise
        else:
            try:
                cur.execute("COMMIT")
            except duckdb.Error as exc:
                raise StoreError(f"event store commit failed: {exc}") from exc

    @staticmethod
    def _append_events(cur: duckdb.DuckDBPyConnection, events: pa.Table) -> None:
        cur.register(_STAGE, events)
        try:
            cur.execute(
                f"INSERT INTO tl_events SELECT project, event_id, event, profile_id, distinct_id,"
                f" time::TIMESTAMP, received_at::TIMESTAMP, source, properties FROM {_STAGE}"
            )
        finally:
            cur.unregister(_STAGE)

    @staticmethod
    def _upsert(cur: duckdb.DuckDBPyConnection, table: str, staged: pa.Table) -> None:
        if not staged.num_rows:
            return
        keys, _ = _REPLICA[table]
        cur.register(_STAGE, staged)
        try:
            match = " AND ".join(f"{table}.{k} = s.{k}" for k in keys)
            cur.execute(f"DELETE FROM {table} USING {_STAGE} AS s WHERE {match}")
        finally:
            cur.unregister(_STAGE)
        DuckDBEventStore._insert(cur, table, staged)

    @staticmethod
    def _insert(cur: duckdb.DuckDBPyConnection, table: str, staged: pa.Table) -> None:
        if not staged.num_rows:
            return
        _, select = _REPLICA[table]
        cur.register(_STAGE, staged)
        try:
            cur.execute(f"INSERT INTO {table} SELECT {select} FROM {_STAGE} WHERE keep")
        finally:
            cur.unregister(_STAGE)

    # -- reading ----------------------------------------------------------------------

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        if self._closed:
            raise StoreError("the event store is closed")
        return self._con.cursor()

    def _read(self, sql: str, params: list[Any]) -> duckdb.DuckDBPyConnection:
        return self._cursor().execute(sql, params)

    def _run(self, sql: str, *, timeout_s: float | None, max_rows: int | None) -> RunResult:
        cur = self._cursor()
        expired = threading.Event()

        def interrupt() -> None:
            expired.set()
            cur.interrupt()

        timer = threading.Timer(timeout_s, interrupt) if timeout_s is not None else None
        try:
            if timer is not None:
                timer.start()
            rel = cur.sql(sql)
            json_columns = {i for i, t in enumerate(rel.types) if str(t) == "JSON"}
            if max_rows is None:
                return RunResult(rel.to_arrow_table(), json_columns)
            reader = rel.to_arrow_reader(_ARROW_BATCH_ROWS)
            batches: list[pa.RecordBatch] = []
            rows = 0
            truncated = False
            for record_batch in reader:
                batches.append(record_batch)
                rows += record_batch.num_rows
                if rows > max_rows:
                    truncated = True
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema).slice(0, max_rows)
            return RunResult(table, json_columns, truncated)
        except (duckdb.Error, pa.ArrowException, OSError) as exc:
            # Streaming results surface DuckDB errors (an interrupt too) through Arrow.
            if expired.is_set() or isinstance(exc, duckdb.InterruptException):
                raise QueryTimeout(f"timeout: the query ran past {timeout_s} s") from None
            raise QueryError(f"failed: {_first_line(str(exc))}") from None
        finally:
            if timer is not None:
                timer.cancel()
            cur.close()

    @contextmanager
    def connection_for_analysis(self, project: str) -> Iterator[AnalysisConnection]:
        cur = self._cursor()
        try:
            views = project_views(project)
            for name in VIEW_TEMPLATES:
                cur.execute(f"CREATE TEMP VIEW {name} AS {views[name].sql(dialect='duckdb')}")
            yield DuckDBAnalysisConnection(cur)
        finally:
            cur.close()


class DuckDBAnalysisConnection:
    """A DuckDB cursor whose temp views `events`, `profiles`, ... are one project's.

    ``duckdb`` is the cursor itself, for code that wants DuckDB's relational API.
    """

    dialect = "duckdb"

    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self.duckdb = cursor

    def arrow(self, sql: str) -> pa.Table:
        try:
            return self.duckdb.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"failed: {_first_line(str(exc))}") from None


def _check_memory_limit(memory_limit: str) -> None:
    """Raise ConfigError when DuckDB refuses the memory limit itself."""
    if not memory_limit:
        return
    try:
        duckdb.connect(":memory:", config={"memory_limit": memory_limit}).close()
    except duckdb.Error as exc:
        raise ConfigError(
            f"duckdb_memory_limit: {memory_limit!r} is not a DuckDB memory size such as 512MB"
            f" ({_first_line(str(exc))})"
        ) from None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "error"
