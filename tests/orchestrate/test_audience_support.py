"""Shared helpers for the audience tests: a state-store transaction on SQLite or
PostgreSQL (a private schema per test), and an in-memory DuckDB event store with
the event store's view shapes.

The in-memory DuckDB tables stand in for the event store where a test runs
thousands of examples; the engine tests use the real event store.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import orjson
import psycopg
import pyarrow as pa
import pytest

from touchline.clock import Clock
from touchline.orchestrate import audience_hooks
from touchline.orchestrate.audience_reader import StoreEventReader
from touchline.store.batch import EVENT_SCHEMA, IngestBatch, ProfileRow
from touchline.store.events.duckdb import DuckDBEventStore
from touchline.store.state import StateStore, open_state_store

PG_DB_URL = "postgresql://postgres@127.0.0.1:5432/test"

STATE_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A URL of the test database whose search_path is a fresh schema, dropped after."""
    try:
        conn = psycopg.connect(PG_DB_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    schema = f"aud_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_DB_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DB_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def state_store(backend: str, tmp: Path, clock: Clock | None = None) -> Iterator[StateStore]:
    """The real state store on ``backend`` with the audience tables."""
    with contextlib.ExitStack() as stack:
        url = "" if backend == "sqlite" else stack.enter_context(pg_schema_url())
        store = open_state_store(url, tmp, clock=clock)
        stack.callback(store.close)
        for name, statements in audience_hooks.state_schema().items():
            store.ensure_schema(name, statements)
        yield store


class StoreEvents:
    """The real DuckDB event store, fed the way the ingest pipeline feeds it."""

    def __init__(self, path: Path, project: str = "default") -> None:
        self.store = DuckDBEventStore(path)
        self.project = project
        self.reader = StoreEventReader(self.store)
        self._events: list[dict[str, Any]] = []
        self._profiles: list[ProfileRow] = []
        self._offset = 0

    def add_profile(self, user_id: int, properties: dict[str, Any]) -> None:
        self._profiles.append(ProfileRow(self.project, user_id, properties, None, None, 0))

    def add_event(self, user_id: int, event: str, time_ms: int,
                  properties: dict[str, Any] | None = None) -> None:
        self._events.append({
            "project": self.project, "event_id": uuid.uuid4().hex, "event": event,
            "profile_id": user_id, "distinct_id": str(user_id), "time": time_ms,
            "received_at": time_ms, "source": "test",
            "properties": orjson.dumps(properties or {}).decode(),
        })

    def commit(self) -> pa.Table:
        """Commit what was added; returns the table ``on_events`` receives."""
        table = pa.Table.from_pylist(self._events, schema=EVENT_SCHEMA)
        self._offset += 1
        self.store.commit_batch(IngestBatch(table, self._offset, profiles=self._profiles))
        self._events, self._profiles = [], []
        return table.append_column("user_id", table.column("profile_id"))

    def close(self) -> None:
        self.store.close()


class EventDB:
    """In-memory DuckDB with ``events`` and ``profiles`` tables of the store's shape."""

    def __init__(self) -> None:
        self.conn = duckdb.connect(":memory:")
        self.conn.execute(
            "CREATE TABLE events (event_id VARCHAR, event VARCHAR, user_id BIGINT, "
            "distinct_id VARCHAR, time TIMESTAMP, received_at TIMESTAMP, source VARCHAR, "
            "properties JSON)"
        )
        self.conn.execute(
            "CREATE TABLE profiles (user_id BIGINT, properties JSON, first_seen TIMESTAMP, "
            "last_seen TIMESTAMP, event_count BIGINT)"
        )

    def add_profile(self, user_id: int, properties: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO profiles VALUES (?, ?, NULL, NULL, 0)",
            (user_id, orjson.dumps(properties).decode()),
        )

    def add_event(
        self, user_id: int, event: str, time_ms: int, properties: dict[str, Any] | None = None
    ) -> None:
        self.conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, make_timestamp(?::BIGINT * 1000), "
            "make_timestamp(?::BIGINT * 1000), 'test', ?)",
            (uuid.uuid4().hex, event, user_id, str(user_id), time_ms, time_ms,
             orjson.dumps(properties or {}).decode()),
        )

    def rows(self, project: str, sql: str) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql).fetchall()

    def rows_many(self, project: str, sqls: list[str]) -> list[list[tuple[Any, ...]]]:
        return [self.rows(project, sql) for sql in sqls]


# ------------------------------------------------------------ plain Python reference

Event = tuple[int, str, int, dict[str, Any]]  # user_id, event, time_ms, properties


def _typed_cmp(props: dict[str, Any], prop: str, op: str, value: Any) -> bool:
    if prop not in props:
        return False
    v = props[prop]
    if isinstance(value, bool):
        if not isinstance(v, bool):
            return False
    elif isinstance(value, str):
        if not isinstance(v, str):
            return False
    else:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        v, value = float(v), float(value)
    return {
        "=": v == value, ">": v > value, ">=": v >= value, "<": v < value, "<=": v <= value,
    }[op]


def ref_prop_test(props: dict[str, Any], t: Any) -> bool:
    negations = {"!=": "=", "not_in": "in", "not_contains": "contains", "not_set": "is_set"}
    if t.op in negations:
        return not ref_prop_test(props, type(t)(t.prop, negations[t.op], t.value))
    if t.op == "is_set":
        return props.get(t.prop) is not None
    if t.op == "in":
        return any(_typed_cmp(props, t.prop, "=", v) for v in t.value)
    if t.op == "contains":
        v = props.get(t.prop)
        if isinstance(v, str):
            return t.value in v
        if isinstance(v, list):
            return any(isinstance(x, str) and x == t.value for x in v)
        return False
    return _typed_cmp(props, t.prop, t.op, t.value)


def ref_member(
    cond: Any, user: int, profile: dict[str, Any], events: list[Event], at_ms: int,
    segments: dict[str, Any] | None = None,
) -> bool:
    """Whether ``user`` is in ``cond`` as of ``at_ms``, by the documented semantics."""
    from touchline.orchestrate import audience_model as m
    from touchline.orchestrate.audience_sql import bucket_of

    def rec(c: Any) -> bool:
        if isinstance(c, m.All):
            return all(rec(x) for x in c.items)
        if isinstance(c, m.AnyOf):
            return any(rec(x) for x in c.items)
        if isinstance(c, m.Not):
            return not rec(c.item)
        if isinstance(c, m.Trait):
            return ref_prop_test(profile, c.test)
        if isinstance(c, m.Bucket):
            return c.start <= bucket_of(user, c.salt) < c.end
        if isinstance(c, m.InSegment):
            target = (segments or {})[c.segment]
            return user in target if isinstance(target, frozenset) else rec(target)
        mine = [
            e for e in events
            if e[0] == user and e[1] == c.event and e[2] <= at_ms
            and all(ref_prop_test(e[3], t) for t in c.where)
        ]
        if isinstance(c, m.Performed):
            w = c.window
            mine = [
                e for e in mine
                if (w.last_ms is None or e[2] > at_ms - w.last_ms)
                and (w.start_ms is None or e[2] >= w.start_ms)
                and (w.end_ms is None or e[2] < w.end_ms)
            ]
            if c.aggregate == "count":
                value: float | None = float(len(mine))
            else:
                nums = [
                    float(e[3][c.prop]) for e in mine
                    if isinstance(e[3].get(c.prop), int | float)
                    and not isinstance(e[3].get(c.prop), bool)
                ]
                if c.aggregate == "sum":
                    value = float(sum(nums))
                elif not nums:
                    value = None
                else:
                    value = {"avg": sum(nums) / len(nums), "min": min(nums),
                             "max": max(nums)}[c.aggregate]
            if value is None:
                return False
            if c.op == "between":
                return c.value[0] <= value <= c.value[1]
            x = c.value[0]
            return {"=": value == x, "!=": value != x, ">": value > x, ">=": value >= x,
                    "<": value < x, "<=": value <= x}[c.op]
        assert isinstance(c, m.FirstLast)
        if not mine:
            return False
        t = min(e[2] for e in mine) if c.which == "first" else max(e[2] for e in mine)
        return {
            "within": t > at_ms - c.ms, "more_than": t <= at_ms - c.ms,
            "before": t < c.ms, "after": t >= c.ms,
        }[c.when]

    return rec(cond)
