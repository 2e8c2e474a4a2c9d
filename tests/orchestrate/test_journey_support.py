"""Shared helpers for the journey tests: the real state store on SQLite or PostgreSQL
(a private schema per test), a virtual clock, profiles kept in a real table, and
helpers to apply definitions and read rows back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from touchline.clock import VirtualClock
from touchline.orchestrate import segments, storage
from touchline.orchestrate.engine import Engine, JourneyEvent
from touchline.orchestrate.validate import parse_journey
from touchline.store.state import StateStore, open_state_store

PG_DB_URL = "postgresql://postgres@127.0.0.1:5432/test"
T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC, a Tuesday


def pg_schema_url() -> Iterator[str]:
    try:
        conn = psycopg.connect(PG_DB_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    schema = f"j_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_DB_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DB_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def open_store(url: str, tmp: Path, clock: VirtualClock) -> StateStore:
    store = open_state_store(url, tmp, clock=clock)
    store.ensure_schema(storage.SCHEMA_NAME, storage.STATE_SCHEMA)
    store.ensure_schema(segments.SCHEMA_NAME, segments.STATE_SCHEMA)
    store.ensure_schema("journey_test_profiles", {
        b: ["CREATE TABLE IF NOT EXISTS test_profiles (project TEXT, user_id BIGINT, "
            "props TEXT, PRIMARY KEY (project, user_id))"] for b in ("sqlite", "postgres")})
    return store


def table_profiles(tx: Any, project: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """A profile source over a real table (the stitch module is another engineer's)."""
    marks = ",".join("?" * len(ids))
    rows = tx.fetchall(f"SELECT user_id, props FROM test_profiles WHERE project = ? AND "
                       f"user_id IN ({marks})", [project, *ids])
    return {int(r[0]): orjson.loads(r[1]) for r in rows}


def set_profile(store: StateStore, user_id: int, props: dict[str, Any]) -> None:
    with store.transaction() as tx:
        tx.execute("DELETE FROM test_profiles WHERE project = 'default' AND user_id = ?",
                   (user_id,))
        tx.execute("INSERT INTO test_profiles VALUES ('default', ?, ?)",
                   (user_id, orjson.dumps(props).decode()))


def apply(engine: Engine, source: str | dict[str, Any],
          migrate: dict[str, str] | None = None) -> int:
    j = parse_journey(source)
    with engine.store.transaction() as tx:
        v = storage.apply_journey(tx, j, engine.clock.now_ms(), migrate)
    engine.refresh()
    return v


def ev(user: int, event: str, t: int, eid: str = "", **props: Any) -> JourneyEvent:
    return JourneyEvent("default", user, event, t, props, eid or f"{event}-{user}-{t}")


def states(store: StateStore, journey: str = "") -> list[tuple[Any, ...]]:
    with store.transaction() as tx:
        return [tuple(r) for r in tx.fetchall(
            "SELECT user_id, entry_key, node, status, due_ms, exit_reason FROM journey_states "
            "WHERE journey_id LIKE ? ORDER BY user_id, entered_ms", (journey or "%",))]


def outbox(store: StateStore) -> list[tuple[Any, ...]]:
    with store.transaction() as tx:
        return [tuple(r) for r in tx.fetchall(
            "SELECT user_id, node, channel, status, message_id FROM journey_outbox "
            "ORDER BY user_id, created_ms, node")]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def jstore(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    clock = VirtualClock(T0)
    if request.param == "sqlite":
        store = open_store("", tmp_path, clock)
        yield store
        store.close()
        return
    gen = pg_schema_url()
    url = next(gen)
    store = open_store(url, tmp_path, clock)
    try:
        yield store
    finally:
        store.close()
        for _ in gen:
            pass


@pytest.fixture
def engine(jstore: StateStore) -> Engine:
    return Engine(jstore, VirtualClock(T0), profiles=table_profiles)
