"""How the audience engine reads the event store: trusted SQL over one project's views.

:class:`StoreEventReader` keeps, per thread and project, one analysis connection of
Touchline's event store open, because opening one (creating the project's views)
costs more than the small queries of the real-time path.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

__all__ = ["EventReader", "StoreEventReader"]


class EventReader(Protocol):
    def rows(self, project: str, sql: str) -> list[tuple[Any, ...]]:
        """Run trusted SQL over the project's ``events``/``profiles`` views."""
        ...

    def rows_many(self, project: str, sqls: Sequence[str]) -> list[list[tuple[Any, ...]]]:
        """Several queries through one connection (the real-time path's round trip)."""
        ...


class StoreEventReader:
    """An :class:`EventReader` over Touchline's event store.

    Opening an analysis connection creates the project's views; the real-time path
    runs every few milliseconds, so each thread keeps its connection per project
    open (DuckDB cursors see every commit made since) until :meth:`close`.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._local = threading.local()
        self._stacks: list[contextlib.ExitStack] = []
        self._lock = threading.Lock()

    def _connection(self, project: str) -> Any:
        conns: dict[str, Any] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
            stack = self._local.stack = contextlib.ExitStack()
            with self._lock:
                self._stacks.append(stack)
        if project not in conns:
            conns[project] = self._local.stack.enter_context(
                self.store.connection_for_analysis(project))
        return conns[project]

    def rows(self, project: str, sql: str) -> list[tuple[Any, ...]]:
        return self.rows_many(project, [sql])[0]

    def rows_many(self, project: str, sqls: Sequence[str]) -> list[list[tuple[Any, ...]]]:
        conn = self._connection(project)
        out: list[list[tuple[Any, ...]]] = []
        for sql in sqls:
            table: pa.Table = conn.arrow(sql)
            columns = [c.to_pylist() for c in table.columns]
            out.append(list(zip(*columns, strict=True)))
        return out

    def close(self) -> None:
        """Close every thread's connections (call before closing the event store)."""
        with self._lock:
            stacks, self._stacks = self._stacks, []
        for stack in stacks:
            stack.close()
