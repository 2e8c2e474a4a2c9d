"""The event store: stored events plus a replica of profiles, identities and items.

``open_event_store(data_dir)`` opens the embedded DuckDB store; the ClickHouse
backend (over chDB) sits beside it behind the same :class:`EventStore` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...errors import ConfigError
from .base import AnalysisConnection, EventStore, QueryResult
from .duckdb import DuckDBEventStore

__all__ = [
    "BACKENDS",
    "AnalysisConnection",
    "DuckDBEventStore",
    "EventStore",
    "QueryResult",
    "open_event_store",
]

EVENTS_FILE = "events.duckdb"
CLICKHOUSE_DIR = "events.clickhouse"


def _duckdb(data_dir: Path, read_only: bool, memory_limit: str, threads: int) -> EventStore:
    return DuckDBEventStore(
        data_dir / EVENTS_FILE, read_only=read_only, memory_limit=memory_limit, threads=threads
    )


def _clickhouse(data_dir: Path, read_only: bool, memory_limit: str, threads: int) -> EventStore:
    from .clickhouse import ClickHouseEventStore  # chdb is an optional dependency

    # The memory and thread settings are DuckDB's; chDB keeps its own defaults.
    return ClickHouseEventStore(data_dir / CLICKHOUSE_DIR, read_only=read_only)


BACKENDS: dict[str, Callable[[Path, bool, str, int], EventStore]] = {
    "duckdb": _duckdb,
    "clickhouse": _clickhouse,
}


def open_event_store(
    data_dir: Path,
    *,
    read_only: bool = False,
    backend: str = "duckdb",
    memory_limit: str = "",
    threads: int = 0,
) -> EventStore:
    """The event store of a data directory: embedded DuckDB (``data_dir/events.duckdb``)
    by default, or ClickHouse in-process through chDB (``data_dir/events.clickhouse``).

    ``memory_limit`` (a DuckDB size such as ``"512MB"``; empty for DuckDB's default)
    and ``threads`` (0 for one per core) configure the DuckDB store."""
    opener = BACKENDS.get(backend)
    if opener is None:
        raise ConfigError(f"unknown event store backend {backend!r}: {', '.join(BACKENDS)}")
    data_dir = Path(data_dir)
    if not read_only:
        data_dir.mkdir(parents=True, exist_ok=True)
    return opener(data_dir, read_only, memory_limit, threads)
