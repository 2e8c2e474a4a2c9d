"""The embedded state store: one SQLite file in the data directory, in WAL mode."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from ...clock import Clock
from ...errors import Conflict, StoreError
from .base import Dialect, StateStore

__all__ = ["SQLITE", "SqliteStateStore"]

SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    supports_skip_locked=False,
    json_type="TEXT",
    autoincrement_pk="INTEGER PRIMARY KEY AUTOINCREMENT",
    # The write transaction locks the whole database: no row locks to ask for.
    for_update="",
    skip_locked="",
    max_params=32_766,
)


class SqliteStateStore(StateStore):
    """State in ``path`` (WAL: readers on other threads never wait for the writer)."""

    dialect = SQLITE

    def __init__(
        self, path: Path, *, clock: Clock | None = None, busy_timeout_s: float = 30.0,
        **kwargs: Any,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc}") from exc
        super().__init__(clock=clock, **kwargs)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: durable across process crashes; the ingest log
            # covers power loss, since every state change is replayed from it.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("PRAGMA cache_size=-65536")
            # Reads through the OS page cache instead of copying pages: large
            # identity indexes stay warm across connections.
            conn.execute("PRAGMA mmap_size=1073741824")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the state store {self.path}: {exc}") from exc
        return conn

    def _begin(self, conn: Any, read_only: bool) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later
        # writes can fail with SQLITE_BUSY instead of waiting.
        conn.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def _rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _run(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        try:
            return conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{exc} in: {sql[:200]}") from exc

    def _run_many(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        try:
            return conn.executemany(sql, rows)
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{exc} in: {sql[:200]}") from exc

    def _rows_source(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any]]:
        # One JSON array parameter, unpacked by json_each: no parameter-count limit.
        cols = ", ".join(f"j.value ->> {i} AS {name}" for i, (name, _) in enumerate(columns))
        return f"(SELECT {cols} FROM json_each(?) AS j)", [orjson.dumps(rows).decode()]

    def _allocate_ids(self, conn: Any, sequence: str, count: int) -> int:
        # The write transaction holds the database lock, so this cannot interleave.
        row = self._run(
            conn,
            "INSERT INTO id_sequences (name, value) VALUES (?, ?) ON CONFLICT (name) "
            "DO UPDATE SET value = value + excluded.value RETURNING value",
            (sequence, count),
        ).fetchone()
        return int(row[0]) - count + 1

    def _is_driver_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.Error)
