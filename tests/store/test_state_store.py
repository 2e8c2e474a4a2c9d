"""The state store's own surface, on every backend: schema, projects, kv, offsets, SQL."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pytest

from touchline.errors import Conflict, InvalidInput, StoreError
from touchline.store.state import StateStore, open_state_store
from touchline.store.state.postgres import rewrite_placeholders

FEATURE_SCHEMA = {
    "sqlite": [
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "project TEXT NOT NULL, body TEXT NOT NULL)",
    ],
    "postgres": [
        "CREATE TABLE IF NOT EXISTS notes (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "project TEXT NOT NULL, body TEXT NOT NULL)",
    ],
}


def test_default_project_exists_on_first_open(state_store: StateStore) -> None:
    with state_store.transaction() as tx:
        projects = tx.list_projects()
    assert [p.name for p in projects] == ["default"]
    assert projects[0].time_zone == "Asia/Shanghai"
    assert len(projects[0].write_key) >= 20


def test_create_and_find_projects(state_store: StateStore) -> None:
    with state_store.transaction() as tx:
        shop = tx.create_project("shop", write_key="wk-shop", time_zone="UTC")
        other = tx.create_project("other")
    assert shop.write_key == "wk-shop" and shop.time_zone == "UTC"
    assert other.write_key and other.write_key != shop.write_key
    with state_store.transaction() as tx:
        assert tx.get_project("shop") == shop
        assert tx.project_by_write_key("wk-shop") == shop
        assert tx.project_by_write_key(other.write_key) == other
        assert tx.get_project("missing") is None
        assert tx.project_by_write_key("nope") is None
        assert [p.name for p in tx.list_projects()] == ["default", "other", "shop"]


def test_duplicate_project_and_key_conflict(state_store: StateStore) -> None:
    with state_store.transaction() as tx:
        tx.create_project("shop", write_key="k1")
    with pytest.raises(Conflict), state_store.transaction() as tx:
        tx.create_project("shop")
    with pytest.raises(Conflict), state_store.transaction() as tx:
        tx.create_project("shop2", write_key="k1")
    with pytest.raises(InvalidInput) as err, state_store.transaction() as tx:
        tx.create_project("")
    assert err.value.field == "name"


def test_kv_and_offsets(state_store: StateStore) -> None:
    with state_store.transaction() as tx:
        assert tx.kv_get("admin_token") is None
        assert tx.get_offset("ingest") == 0
        tx.kv_set("admin_token", "t1")
        tx.kv_set("admin_token", "t2")
        tx.set_offset("ingest", 42)
        tx.set_offset("ingest", 4096)
    with state_store.transaction() as tx:
        assert tx.kv_get("admin_token") == "t2"
        assert tx.get_offset("ingest") == 4096
        assert tx.get_offset("other") == 0


def test_rollback_discards_everything(state_store: StateStore) -> None:
    with pytest.raises(RuntimeError), state_store.transaction() as tx:
        tx.set_offset("ingest", 7)
        tx.create_project("gone")
        raise RuntimeError("boom")
    with state_store.transaction() as tx:
        assert tx.get_offset("ingest") == 0
        assert tx.get_project("gone") is None


def test_nested_transaction_joins_outer(state_store: StateStore) -> None:
    with pytest.raises(RuntimeError), state_store.transaction() as outer:
        with state_store.transaction() as inner:
            assert inner is outer
            inner.set_offset("x", 1)
        raise RuntimeError("outer fails")
    with state_store.transaction() as tx:
        assert tx.get_offset("x") == 0


def test_feature_schema_applied_once_and_migrated(state_store: StateStore) -> None:
    state_store.ensure_schema("notes", FEATURE_SCHEMA)
    state_store.ensure_schema("notes", FEATURE_SCHEMA)
    assert state_store.schema_version("notes") == 1
    with state_store.transaction() as tx:
        tx.execute("INSERT INTO notes (project, body) VALUES (?, ?)", ("default", "50% off?"))
        tx.executemany("INSERT INTO notes (project, body) VALUES (?, ?)",
                       [("default", "b"), ("other", "c")])
    # Appending a statement is a migration: only the new one runs.
    migrated = {k: [*v, "ALTER TABLE notes ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0"]
                for k, v in FEATURE_SCHEMA.items()}
    state_store.ensure_schema("notes", migrated)
    state_store.ensure_schema("notes", migrated)
    assert state_store.schema_version("notes") == 2
    with state_store.transaction() as tx:
        rows = tx.fetchall(
            "SELECT body, pinned FROM notes WHERE project = ? AND body LIKE '%' ORDER BY id",
            ("default",),
        )
        assert [tuple(r) for r in rows] == [("50% off?", 0), ("b", 0)]
        one = tx.fetchone("SELECT count(*) FROM notes WHERE body = '?'")
        assert one[0] == 0


def test_newer_schema_than_code_is_refused(state_store: StateStore) -> None:
    state_store.ensure_schema("notes", {k: [*v, "SELECT 1"] for k, v in FEATURE_SCHEMA.items()})
    with pytest.raises(StoreError, match="newer"):
        state_store.ensure_schema("notes", FEATURE_SCHEMA)


def test_schema_without_backend_statements(state_store: StateStore) -> None:
    with pytest.raises(StoreError, match=state_store.dialect.name):
        state_store.ensure_schema("x", {"mysql": ["SELECT 1"]})


def test_bad_sql_is_a_store_error(state_store: StateStore) -> None:
    with pytest.raises(StoreError), state_store.transaction() as tx:
        tx.execute("SELECT * FROM no_such_table")
    with state_store.transaction() as tx:  # the store is still usable
        assert tx.get_offset("ingest") == 0


def test_rows_source_and_id_allocation(state_store: StateStore) -> None:
    with state_store.transaction() as tx:
        src, params = tx.rows_source([("name", "text"), ("n", "bigint")],
                                     [("a", 1), ("b'?", 2), ("c", 3)])
        rows = tx.fetchall(f"SELECT name, n FROM {src} AS v ORDER BY n", params)
        assert [tuple(r) for r in rows] == [("a", 1), ("b'?", 2), ("c", 3)]
        first = tx.allocate_ids("t", 10)
        second = tx.allocate_ids("t", 5)
    assert second == first + 10


def test_insert_many(state_store: StateStore) -> None:
    state_store.ensure_schema("notes", FEATURE_SCHEMA)
    with state_store.transaction() as tx:
        tx.insert_many("notes", ("project", "body"), [("p", f"b{n}") for n in range(1000)])
        tx.insert_many("notes", ("project", "body"), [])
        assert tx.fetchone("SELECT count(*), min(body) FROM notes WHERE project = ?", ("p",)) \
            == (1000, "b0")


def test_json_columns_read_back_as_text(state_store: StateStore) -> None:
    json_type = state_store.dialect.json_type
    state_store.ensure_schema("docs", {state_store.dialect.name: [
        f"CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, body {json_type} NOT NULL)"]})
    with state_store.transaction() as tx:
        tx.execute("INSERT INTO docs (id, body) VALUES (?, ?)", ("a", '{"x": [1, 2]}'))
        body = tx.fetchone("SELECT body FROM docs WHERE id = ?", ("a",))[0]
    assert isinstance(body, str) and orjson.loads(body) == {"x": [1, 2]}


def test_dialect_is_data(state_store: StateStore) -> None:
    d = state_store.dialect
    assert d.name in ("sqlite", "postgres")
    assert d.supports_skip_locked == (d.name == "postgres")
    assert d.skip_locked == ("" if d.name == "sqlite" else " FOR UPDATE SKIP LOCKED")


def test_threads_use_their_own_connections(state_store: StateStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                with state_store.transaction() as tx:
                    tx.set_offset(f"w{n}", i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with state_store.transaction(read_only=True) as tx:
        assert [tx.get_offset(f"w{n}") for n in range(4)] == [19] * 4


def test_id_allocation_is_unique_across_threads(state_store: StateStore) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            with state_store.transaction() as tx:
                first = tx.allocate_ids("profile", 5)
            with lock:
                got.extend(range(first, first + 5))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 400


def test_reopen_keeps_data(state_url: str, tmp_path: Path) -> None:
    store = open_state_store(state_url, tmp_path)
    with store.transaction() as tx:
        tx.create_project("kept", write_key="wk")
    key = store.transaction
    store.close()
    with pytest.raises(StoreError):
        with key() as tx:
            pass
    store = open_state_store(state_url, tmp_path)
    with store.transaction() as tx:
        assert tx.get_project("kept") is not None
        assert len(tx.list_projects()) == 2
    store.close()


def test_placeholder_rewrite_skips_literals() -> None:
    sql = "SELECT '?', \"a?\", x -- what?\n FROM t WHERE a = ? AND b LIKE '50%' AND c % 2 = ?"
    assert rewrite_placeholders(sql) == (
        "SELECT '?', \"a?\", x -- what?\n FROM t WHERE a = %s AND b LIKE '50%%' AND c %% 2 = %s"
    )
