"""State-store backends: SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from ...clock import Clock
from ...errors import ConfigError
from .base import Dialect, StateStore, StateTx

__all__ = ["Dialect", "StateStore", "StateTx", "open_state_store"]


def open_state_store(
    url: str, data_dir: Path, *, clock: Clock | None = None, time_zone: str = "Asia/Shanghai"
) -> StateStore:
    """Open the state store named by ``url``: "" (or ``sqlite:///path``) for SQLite,
    by default ``data_dir/state.db``; ``postgresql://...`` for PostgreSQL.

    The schema is created (or migrated) on open, with a ``default`` project whose
    time zone is ``time_zone``."""
    if not url:
        from .sqlite import SqliteStateStore

        return SqliteStateStore(Path(data_dir) / "state.db", clock=clock, time_zone=time_zone)
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStateStore

        return SqliteStateStore(Path(url.removeprefix("sqlite:///")), clock=clock, time_zone=time_zone)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStateStore

        return PostgresStateStore(url, clock=clock, time_zone=time_zone)
    raise ConfigError(f"state_url: unsupported URL {url!r} (use '' or postgresql://...)")
