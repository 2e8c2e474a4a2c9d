"""The ``state_store`` fixture: every state-store test runs against SQLite and PostgreSQL.

PostgreSQL tests use one throw-away database per test run on 127.0.0.1:5432 and a
fresh schema per test (through the URL's ``search_path``), dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from touchline.clock import VirtualClock
from touchline.store.state import StateStore, open_state_store
from touchline.track.records import Record

__all__ = ["Rec", "clock", "pg_database", "pg_url", "state_store", "state_url"]

PG_ADMIN_URL = os.environ.get("TOUCHLINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_base(url: str) -> str:
    return url.rsplit("/", 1)[0]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database for this test run; skipped when the server is unreachable."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    name = f"touchline_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{_pg_base(PG_ADMIN_URL)}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A URL whose search_path is a fresh, empty schema."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{pg_database}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(1_700_000_000_000)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def state_store(state_url: str, tmp_path: Path, clock: VirtualClock) -> Iterator[StateStore]:
    store = open_state_store(state_url, tmp_path, clock=clock)
    try:
        yield store
    finally:
        store.close()


class Rec:
    """Builds records with increasing event ids and times: ``Rec("p").track(login_id="u1")``."""

    def __init__(self, project: str = "default", start_ms: int = 1_700_000_000_000) -> None:
        self.project = project
        self.n = 0
        self.start_ms = start_ms

    def _make(self, kind: str, ids: dict[str, str], **kw: object) -> Record:
        self.n += 1
        t = kw.pop("time_ms", self.start_ms + self.n * 1000)
        return Record(
            kind=kind,  # type: ignore[arg-type]
            project=str(kw.pop("project", self.project)), event_id=f"e{self.n}",
            time_ms=int(t),  # type: ignore[call-overload]
            received_ms=self.start_ms + self.n * 1000, source="test",
            event=str(kw.pop("event", "view")) if kind == "track" else None,
            identities=ids, **kw,  # type: ignore[arg-type]
        )

    def track(self, ids: dict[str, str] | None = None, **kw: object) -> Record:
        return self._make("track", dict(ids or {}), **kw)

    def link(self, ids: dict[str, str], **kw: object) -> Record:
        return self._make("link", dict(ids), link=True, **kw)

    def unlink(self, ids: dict[str, str], **kw: object) -> Record:
        return self._make("unlink", dict(ids), **kw)

    def profile(self, ids: dict[str, str], op: str, properties: dict[str, object],
                **kw: object) -> Record:
        return self._make("profile", dict(ids), op=op, properties=properties, **kw)

    def item(self, item_type: str | None, item_id: str | None, op: str,
             properties: dict[str, object] | None = None, **kw: object) -> Record:
        return self._make("item", {}, op=op, item_type=item_type, item_id=item_id,
                          properties=dict(properties or {}), **kw)
