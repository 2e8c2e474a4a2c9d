"""The DuckDB event store's memory limit and thread count (settings duckdb_memory_limit
and duckdb_threads): applied to the database, enforced while appending, refused with a
ConfigError naming the setting when DuckDB cannot use them."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest

from touchline.config import load_settings
from touchline.errors import ConfigError
from touchline.runtime import open_runtime
from touchline.store.batch import EVENT_SCHEMA, IngestBatch
from touchline.store.events import EventStore, open_event_store

T0 = 1_700_000_000_000


def _setting(store: EventStore, name: str) -> str:
    with store.connection_for_analysis("default") as conn:
        row = conn.duckdb.execute(f"SELECT current_setting('{name}')").fetchone()  # type: ignore[attr-defined]
    assert row is not None
    return str(row[0])


def _duckdb_bytes(store: EventStore) -> int:
    with store.connection_for_analysis("default") as conn:
        row = conn.duckdb.execute(  # type: ignore[attr-defined]
            "SELECT sum(memory_usage_bytes) FROM duckdb_memory()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _events(start: int, n: int) -> pa.Table:
    # Random ids and amounts: data that compresses as badly as real events do.
    rng = random.Random(start)
    rows = range(start, start + n)
    return pa.Table.from_pydict({
        "project": ["default"] * n,
        "event_id": [f"{rng.getrandbits(64):016x}" for _ in rows],
        "event": ["view_menu"] * n,
        "profile_id": [i % 5000 for i in rows],
        "distinct_id": [f"member-{rng.randrange(200_000)}" for _ in rows],
        "time": [T0 + i for i in rows],
        "received_at": [T0 + i for i in rows],
        "source": ["sensors"] * n,
        "properties": [f'{{"$lib": "python", "$lib_version": "1.11.0", "seq": {i},'
                       f' "channel": "app", "amount": {rng.random() * 200}}}' for i in rows],
    }, schema=EVENT_SCHEMA)


def test_memory_limit_and_threads_reach_duckdb(tmp_path: Path) -> None:
    store = open_event_store(tmp_path, memory_limit="300MB", threads=1)
    try:
        # DuckDB reports sizes in its own units (300MB is shown as 286.1 MiB).
        assert _setting(store, "memory_limit").startswith("286")
        assert _setting(store, "threads") == "1"
    finally:
        store.close()


def test_runtime_opens_the_event_store_with_the_settings(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={}, duckdb_memory_limit="200MB", duckdb_threads=1)
    rt = open_runtime(settings, ingest=False)
    try:
        assert _setting(rt.events, "memory_limit").startswith("190")
        assert _setting(rt.events, "threads") == "1"
    finally:
        rt.close()


def test_appending_stays_within_the_memory_limit(tmp_path: Path) -> None:
    # Without a limit DuckDB keeps the appended blocks cached (some 30 MB for these
    # 600,000 events, growing with every batch). With 16 MB it evicts them (they are
    # on disk), and queries over all of them still run.
    store = open_event_store(tmp_path, memory_limit="16MB")
    try:
        step = 20_000
        for n, start in enumerate(range(0, 600_000, step)):
            store.commit_batch(IngestBatch(events=_events(start, step), offset=n + 1))
        assert _duckdb_bytes(store) <= 16 * 2**20
        result = store.query(
            "default", "SELECT count(*), count(DISTINCT distinct_id) > 150000 FROM events",
            timeout_s=60, max_rows=1,
        )
        assert result.rows == [[600_000, True]]
    finally:
        store.close()


def test_a_bad_memory_limit_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duckdb_memory_limit"):
        open_event_store(tmp_path, memory_limit="lots")


def test_negative_threads_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duckdb_threads"):
        open_event_store(tmp_path, threads=-1)
