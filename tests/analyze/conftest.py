"""Fixtures: an in-memory DuckDB event store of the real store's shape."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import duckdb
import orjson
import pandas as pd
import pytest

from touchline.analyze.engine import Analyzer
from touchline.analyze.source import DuckDBEventSource

Row = tuple[int, str, int] | tuple[int, str, int, dict[str, Any]]

DDL = """
CREATE TABLE events(event_id VARCHAR, event VARCHAR, user_id BIGINT, distinct_id VARCHAR,
    time TIMESTAMP, received_at TIMESTAMP, source VARCHAR, properties JSON);
CREATE TABLE profiles(user_id BIGINT, properties JSON, first_seen TIMESTAMP,
    last_seen TIMESTAMP, event_count BIGINT);
"""


def insert_events(conn: duckdb.DuckDBPyConnection, rows: Iterable[Row], *,
                  received_ms: int | None = None, start_id: int = 0) -> None:
    recs = []
    for i, r in enumerate(rows):
        props = r[3] if len(r) > 3 else {}  # type: ignore[misc]
        recs.append({
            "event_id": f"e{start_id + i}", "event": r[1], "user_id": r[0],
            "distinct_id": f"d{r[0]}", "t": r[2], "r": r[2] if received_ms is None else received_ms,
            "properties": orjson.dumps(props).decode(),
        })
    if not recs:
        return
    df = pd.DataFrame(recs)  # noqa: F841 - read by DuckDB below
    conn.execute(
        "INSERT INTO events SELECT event_id, event, user_id, distinct_id, make_timestamp(t * 1000),"
        " make_timestamp(r * 1000), 'test', properties::JSON FROM df")


def insert_profiles(conn: duckdb.DuckDBPyConnection, profiles: dict[int, dict[str, Any]]) -> None:
    for uid, props in profiles.items():
        conn.execute("INSERT INTO profiles VALUES (?, ?::JSON, NULL, NULL, 0)",
                     [uid, orjson.dumps(props).decode()])


def make_conn(rows: Sequence[Row] = (), profiles: dict[int, dict[str, Any]] | None = None,
              ) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(":memory:")
    conn.execute(DDL)
    insert_events(conn, rows)
    if profiles:
        insert_profiles(conn, profiles)
    return conn


def make_analyzer(rows: Sequence[Row] = (), profiles: dict[int, dict[str, Any]] | None = None,
                  tz: str = "UTC", **kw: Any) -> Analyzer:
    return Analyzer(DuckDBEventSource(make_conn(rows, profiles)), time_zone=tz, **kw)


@pytest.fixture
def analyzer_factory() -> Callable[..., Analyzer]:
    return make_analyzer
