"""The distributed state store: PostgreSQL through psycopg 3.

Several worker processes can share it: row locks (``FOR UPDATE``), ``SKIP LOCKED``
claims, and id allocation on a side connection so that one worker's open
transaction never blocks another's new profiles.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.types.string import TextLoader

from ...clock import Clock
from ...errors import Conflict, StoreError
from .base import Dialect, StateStore, StateTx

__all__ = ["POSTGRES", "PostgresStateStore", "rewrite_placeholders"]

POSTGRES = Dialect(
    name="postgres",
    placeholder="%s",
    supports_skip_locked=True,
    json_type="JSONB",
    autoincrement_pk="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    for_update=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    max_params=65_535,
)

# `?` inside quoted strings/identifiers and comments stays as it is. psycopg reads
# every `%` as a placeholder, even inside a literal, so every `%` is doubled.
_TOKENS = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\?|%)""", re.S)

_PG_TYPES = {"text": "text", "bigint": "bigint", "int": "bigint", "float": "double precision"}


@lru_cache(maxsize=4096)
def rewrite_placeholders(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (and a literal ``%`` to ``%%``)."""

    def swap(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "?":
            return "%s"
        return tok.replace("%", "%%")

    return _TOKENS.sub(swap, sql)


class PostgresStateStore(StateStore):
    """State in the PostgreSQL database named by ``url``."""

    dialect = POSTGRES

    def __init__(self, url: str, *, clock: Clock | None = None, **kwargs: Any) -> None:
        self.url = url
        self._side = threading.local()
        super().__init__(clock=clock, **kwargs)

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the state store: {exc}") from exc
        # JSON columns read back as text, as on SQLite: callers decode them the same way.
        for name in ("json", "jsonb"):
            conn.adapters.register_loader(name, TextLoader)
        return conn

    def _begin(self, conn: Any, read_only: bool) -> None:
        conn.execute("BEGIN READ ONLY" if read_only else "BEGIN")

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def _rollback(self, conn: Any) -> None:
        conn.execute("ROLLBACK")

    def _run(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        try:
            if params:
                return conn.execute(rewrite_placeholders(sql), params)
            # Without parameters psycopg does not interpret `%`: pass the SQL as is.
            return conn.execute(sql)
        except psycopg.errors.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except psycopg.Error as exc:
            raise StoreError(f"{exc} in: {sql[:200]}") from exc

    def _run_many(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cur = conn.cursor()
        try:
            cur.executemany(rewrite_placeholders(sql), rows)
        except psycopg.errors.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except psycopg.Error as exc:
            raise StoreError(f"{exc} in: {sql[:200]}") from exc
        return cur

    def _insert_many(
        self, conn: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        try:
            with conn.cursor() as cur, cur.copy(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except psycopg.Error as exc:
            raise StoreError(f"{exc} in: COPY {table}") from exc

    def _rows_source(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any]]:
        # One array parameter per column, zipped by unnest: one round trip, typed.
        arrays = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in columns]
        args = ", ".join(f"?::{_PG_TYPES[t]}[]" for _, t in columns)
        names = ", ".join(name for name, _ in columns)
        return f"(SELECT * FROM unnest({args}) AS t({names}))", arrays

    def _side_connection(self) -> Any:
        conn = getattr(self._side, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            self._side.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _allocate_ids(self, conn: Any, sequence: str, count: int) -> int:
        # On a side connection in autocommit: the counter row is locked only for this
        # statement, not for the rest of the caller's transaction. A rollback leaves a
        # gap in the ids, which is harmless: they only need to be unique and ordered.
        row = self._run(
            self._side_connection(),
            "INSERT INTO id_sequences (name, value) VALUES (?, ?) ON CONFLICT (name) "
            "DO UPDATE SET value = id_sequences.value + excluded.value RETURNING value",
            (sequence, count),
        ).fetchone()
        return int(row[0]) - count + 1

    def _lock_schema(self, tx: StateTx) -> None:
        # Two processes opening a fresh database at once would race on CREATE TABLE.
        tx.execute("SELECT pg_advisory_xact_lock(7271263401)")

    def _is_driver_error(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.Error)
