"""The state store interface: transactional truth for projects, identities and profiles.

A :class:`StateStore` hands out :class:`StateTx` objects through
``with store.transaction() as tx:``. Everything a transaction does commits together
or not at all. Feature modules (journeys, audiences, outbox) keep their own tables
here and reach them through a small dialect-neutral SQL surface: ``tx.execute``,
``tx.executemany``, ``tx.fetchall`` and ``tx.fetchone`` take SQL written with ``?``
placeholders, and the backend rewrites them for its driver. What differs between
backends is data in :class:`Dialect` plus the few methods a backend overrides;
shared code never branches on the backend's name.

Connections are per thread: the ingest worker and the server's request threads each
use their own, so a reader is not blocked behind a long ingest batch (SQLite WAL,
PostgreSQL MVCC). A ``transaction()`` opened while the same thread is already inside
one joins the outer transaction, so helpers can be composed freely.
"""

from __future__ import annotations

import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ...clock import Clock, SystemClock
from ...errors import Conflict, InvalidInput, StoreError
from ...track.sink import Project
from .schema import CORE_SCHEMA_NAME, core_schema

__all__ = ["Dialect", "StateStore", "StateTx", "TxHooks"]


@dataclass(frozen=True, slots=True)
class Dialect:
    """What a feature module may need to know about the backend, as plain data.

    ``autoincrement_pk`` is a column definition for an auto-numbered primary key,
    ``json_type`` the column type for JSON documents (always written and read as
    text through this surface), ``bigint`` the 64-bit integer type. ``upsert`` names
    the upsert style; both backends speak ``INSERT ... ON CONFLICT (...) DO UPDATE``.
    ``for_update`` is the row-locking suffix of a SELECT ("" where the whole database
    is locked by the write transaction anyway), and ``skip_locked`` the suffix that
    lets several workers claim different rows ("" where unsupported).
    """

    name: str
    placeholder: str
    supports_skip_locked: bool
    json_type: str
    autoincrement_pk: str
    bigint: str = "BIGINT"
    upsert: str = "on_conflict"
    for_update: str = ""
    skip_locked: str = ""
    max_params: int = 999
    supports_returning: bool = True


@dataclass
class TxHooks:
    """Callbacks that run once the transaction has committed (cache updates)."""

    on_commit: list[Any] = field(default_factory=list)


class StateTx:
    """One open transaction. Backend-neutral: it speaks to the store's driver through
    the backend's ``_run``/``_run_many``/``_rewrite`` methods."""

    def __init__(self, store: StateStore, conn: Any) -> None:
        self.store = store
        self.conn = conn
        self.dialect = store.dialect
        self.hooks = TxHooks()
        # Scratch space that modules (the identity cache overlay) keep per transaction.
        self.scratch: dict[str, Any] = {}

    # -- the dialect-neutral SQL surface ------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement written with ``?`` placeholders; returns a DB-API cursor."""
        return self.store._run(self.conn, sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        """Run one statement for each parameter row."""
        return self.store._run_many(self.conn, sql, rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.execute(sql, params).fetchall())

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def insert_many(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """Append many rows to ``table`` the fastest way the backend has (``COPY`` on
        PostgreSQL). No conflict handling: the rows must be new."""
        self.store._insert_many(self.conn, table, columns, rows)

    def rows_source(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any]]:
        """A FROM-clause fragment that yields ``rows`` as a table with ``columns``
        (name, type among "text"/"bigint"), with its parameters: set-based statements
        over many values in one round trip.

        Put it first and join the tables to it with ``CROSS JOIN ... WHERE``: SQLite
        then keeps it as the outer loop (it has no statistics for it and may
        otherwise rescan it once per table row); PostgreSQL plans it as a plain join.
        """
        return self.store._rows_source(columns, rows)

    def allocate_ids(self, sequence: str, count: int) -> int:
        """Reserve ``count`` consecutive ids of a sequence; returns the first."""
        if count <= 0:
            raise ValueError("count must be positive")
        return self.store._allocate_ids(self.conn, sequence, count)

    def on_commit(self, callback: Any) -> None:
        """Run ``callback()`` after a successful commit (never after a rollback)."""
        self.hooks.on_commit.append(callback)

    @property
    def now_ms(self) -> int:
        return self.store.clock.now_ms()

    # -- projects -------------------------------------------------------------------

    def create_project(
        self, name: str, write_key: str | None = None, time_zone: str = "Asia/Shanghai"
    ) -> Project:
        """Create a project; a write key is generated when none is given."""
        if not name:
            raise InvalidInput("name", "must not be empty")
        if write_key is not None and not write_key.strip():
            raise InvalidInput("write_key", "must not be empty")
        key = write_key or secrets.token_urlsafe(24)
        if self.get_project(name) is not None:
            raise Conflict(f"project {name!r} exists already")
        if self.project_by_write_key(key) is not None:
            raise Conflict("that write key belongs to another project")
        self.execute(
            "INSERT INTO projects (name, write_key, time_zone, created_ms) VALUES (?, ?, ?, ?)",
            (name, key, time_zone, self.now_ms),
        )
        return Project(name=name, write_key=key, time_zone=time_zone)

    def list_projects(self) -> list[Project]:
        rows = self.fetchall("SELECT name, write_key, time_zone FROM projects ORDER BY name")
        return [Project(name=r[0], write_key=r[1], time_zone=r[2]) for r in rows]

    def get_project(self, name: str) -> Project | None:
        r = self.fetchone("SELECT name, write_key, time_zone FROM projects WHERE name = ?", (name,))
        return None if r is None else Project(name=r[0], write_key=r[1], time_zone=r[2])

    def project_by_write_key(self, key: str) -> Project | None:
        r = self.fetchone(
            "SELECT name, write_key, time_zone FROM projects WHERE write_key = ?", (key,)
        )
        return None if r is None else Project(name=r[0], write_key=r[1], time_zone=r[2])

    # -- key/value ------------------------------------------------------------------

    def kv_get(self, key: str) -> str | None:
        r = self.fetchone("SELECT value FROM kv WHERE key = ?", (key,))
        return None if r is None else str(r[0])

    def kv_set(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- named offsets --------------------------------------------------------------

    def get_offset(self, name: str) -> int:
        """The offset recorded under ``name``; 0 when never set."""
        r = self.fetchone("SELECT value FROM offsets WHERE name = ?", (name,))
        return 0 if r is None else int(r[0])

    def find_offset(self, name: str) -> int | None:
        """The offset recorded under ``name``; None when never set."""
        r = self.fetchone("SELECT value FROM offsets WHERE name = ?", (name,))
        return None if r is None else int(r[0])

    def set_offset(self, name: str, value: int) -> None:
        self.execute(
            "INSERT INTO offsets (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    # -- ids of applied non-event records (de-duplication across restarts) ----------

    def remember_records(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """Note (project, event_id, received_ms) of records this transaction applies."""
        if rows:
            self.executemany(
                "INSERT INTO applied_records (project, event_id, received_ms) "
                "VALUES (?, ?, ?) ON CONFLICT (project, event_id) DO NOTHING", rows)

    def recent_records(self, since_ms: int) -> list[tuple[str, str]]:
        rows = self.fetchall(
            "SELECT project, event_id FROM applied_records WHERE received_ms >= ?", (since_ms,))
        return [(str(r[0]), str(r[1])) for r in rows]

    def forget_records(self, before_ms: int) -> None:
        self.execute("DELETE FROM applied_records WHERE received_ms < ?", (before_ms,))


class StateStore(ABC):
    """A state-store backend. Subclasses supply the driver-specific methods."""

    dialect: Dialect

    def __init__(self, *, clock: Clock | None = None, time_zone: str = "Asia/Shanghai") -> None:
        self.clock: Clock = clock or SystemClock()
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        # Per-store caches that modules attach (the identity cache); keyed by module.
        self.caches: dict[str, Any] = {}
        self.ensure_schema(CORE_SCHEMA_NAME, core_schema())
        with self.transaction() as tx:
            if tx.get_project("default") is None:
                tx.create_project("default", time_zone=time_zone)

    # -- driver-specific ----------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> Any:
        """A new driver connection, in autocommit mode (transactions are explicit)."""

    @abstractmethod
    def _begin(self, conn: Any, read_only: bool) -> None: ...

    @abstractmethod
    def _commit(self, conn: Any) -> None: ...

    @abstractmethod
    def _rollback(self, conn: Any) -> None: ...

    @abstractmethod
    def _run(self, conn: Any, sql: str, params: Sequence[Any]) -> Any: ...

    @abstractmethod
    def _run_many(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...

    def _insert_many(
        self, conn: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        marks = ", ".join("?" for _ in columns)
        self._run_many(conn, f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    @abstractmethod
    def _rows_source(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any]]: ...

    @abstractmethod
    def _allocate_ids(self, conn: Any, sequence: str, count: int) -> int: ...

    @abstractmethod
    def _is_driver_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a database error to report as :class:`StoreError`."""

    # -- connections and transactions -----------------------------------------------------

    def _connection(self) -> Any:
        if self._closed:
            raise StoreError("the state store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[StateTx]:
        """Open a transaction on this thread's connection; commit on a clean exit.

        Inside another transaction of the same thread it joins the outer one.
        """
        outer: StateTx | None = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer
            return
        conn = self._connection()
        try:
            self._begin(conn, read_only)
        except Exception as exc:
            if self._is_driver_error(exc):
                raise StoreError(f"cannot begin a state-store transaction: {exc}") from exc
            raise
        tx = StateTx(self, conn)
        self._local.tx = tx
        try:
            yield tx
        except BaseException:
            self._local.tx = None
            try:
                self._rollback(conn)
            except Exception:  # the original error matters more than a failed rollback
                self._drop_connection(conn)
            raise
        self._local.tx = None
        try:
            self._commit(conn)
        except Exception as exc:
            try:
                self._rollback(conn)
            except Exception:
                self._drop_connection(conn)
            if self._is_driver_error(exc):
                raise StoreError(f"state-store commit failed: {exc}") from exc
            raise
        for callback in tx.hooks.on_commit:
            callback()

    def _drop_connection(self, conn: Any) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except Exception:  # already broken; nothing more to do
            pass

    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # closing is best effort at shutdown
                pass

    # -- schemas ---------------------------------------------------------------------------

    def ensure_schema(self, name: str, statements: Mapping[str, Sequence[str]]) -> None:
        """Apply a module's DDL for this backend, once per version.

        ``statements`` maps a backend name ("sqlite", "postgres") to its DDL list. The
        list is append-only: its length is the schema's version, and only statements
        past the version recorded in ``schema_versions`` run, so a module migrates by
        appending (``ALTER TABLE ...``) rather than editing what shipped.
        """
        ddl = statements.get(self.dialect.name)
        if ddl is None:
            raise StoreError(f"schema {name!r} has no statements for {self.dialect.name}")
        with self.transaction() as tx:
            self._lock_schema(tx)
            tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions "
                "(name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            row = tx.fetchone("SELECT version FROM schema_versions WHERE name = ?", (name,))
            applied = 0 if row is None else int(row[0])
            if applied > len(ddl):
                raise StoreError(
                    f"schema {name!r} is at version {applied}, newer than this code "
                    f"({len(ddl)}): upgrade Touchline"
                )
            for statement in ddl[applied:]:
                tx.execute(statement)
            if applied < len(ddl):
                tx.execute(
                    "INSERT INTO schema_versions (name, version) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                    (name, len(ddl)),
                )

    def _lock_schema(self, tx: StateTx) -> None:  # noqa: B027 - an optional hook
        """Serialize concurrent schema creation (processes opening the store at once)."""

    def schema_version(self, name: str) -> int:
        """The applied version (statement count) of a schema; 0 when never applied."""
        with self.transaction(read_only=True) as tx:
            row = tx.fetchone("SELECT version FROM schema_versions WHERE name = ?", (name,))
        return 0 if row is None else int(row[0])
