"""The event-store suite: every test runs against every backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from touchline.errors import ConfigError, InvalidInput, QueryError, QueryTimeout, StoreError
from touchline.store.batch import EVENT_SCHEMA, IdentityRow, IngestBatch, ItemRow, ProfileRow
from touchline.store.events import EventStore, open_event_store

T0 = 1_700_000_000_000


def _open_duckdb(path: Path) -> EventStore:
    return open_event_store(path)


def _open_clickhouse(path: Path) -> EventStore:
    pytest.importorskip("chdb")
    return open_event_store(path, backend="clickhouse")


BACKENDS: dict[str, Callable[[Path], EventStore]] = {
    "duckdb": _open_duckdb,
    "clickhouse": _open_clickhouse,
}


@pytest.fixture(params=sorted(BACKENDS))
def event_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    try:
        store = BACKENDS[request.param](tmp_path)
    except ImportError as exc:
        pytest.skip(f"{request.param} backend not available: {exc}")
    try:
        yield store
    finally:
        store.close()


def events_table(rows: list[dict[str, Any]]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in EVENT_SCHEMA.names}
    for i, row in enumerate(rows):
        full = {
            "project": "p", "event_id": f"e{i}", "event": "view", "profile_id": 1,
            "distinct_id": "d1", "time": T0 + i, "received_at": T0 + i, "source": "test",
            "properties": "{}", **row,
        }
        for name in EVENT_SCHEMA.names:
            cols[name].append(full[name])
    return pa.Table.from_pydict(cols, schema=EVENT_SCHEMA)


def commit(store: EventStore, rows: list[dict[str, Any]], offset: int = 1, **kw: Any) -> None:
    store.commit_batch(IngestBatch(events=events_table(rows), offset=offset, **kw))


def q(store: EventStore, sql: str, project: str = "p") -> list[list[Any]]:
    return store.query(project, sql, timeout_s=10, max_rows=10_000).rows


def test_offsets_start_at_zero_and_follow_batches(event_store: EventStore) -> None:
    assert event_store.get_offset() == 0
    assert event_store.get_offset("other") == 0
    commit(event_store, [{}], offset=42)
    assert event_store.get_offset() == 42
    commit(event_store, [], offset=99)
    assert event_store.get_offset("ingest") == 99


def test_events_are_scoped_to_their_project(event_store: EventStore) -> None:
    commit(event_store, [
        {"project": "p", "event_id": "a", "properties": '{"amount": 5}'},
        {"project": "q", "event_id": "b"},
        {"project": "q", "event_id": "c"},
    ])
    assert q(event_store, "SELECT event_id, properties FROM events") == [["a", {"amount": 5}]]
    assert q(event_store, "SELECT count(*) FROM events", "q") == [[2]]
    assert q(event_store, "SELECT count(*) FROM events", "nope") == [[0]]


def test_results_are_json_ready(event_store: EventStore) -> None:
    commit(event_store, [{"event_id": "x", "time": T0, "properties": '{"a": [1, "b"]}'}])
    res = event_store.query("p", "SELECT * FROM events", timeout_s=10, max_rows=10)
    assert res.columns == ["event_id", "event", "user_id", "distinct_id", "time",
                           "received_at", "source", "properties"]
    assert res.rows == [["x", "view", 1, "d1", "2023-11-14T22:13:20.000Z",
                         "2023-11-14T22:13:20.000Z", "test", {"a": [1, "b"]}]]


def test_user_map_stitches_and_unstitches(event_store: EventStore) -> None:
    commit(event_store, [{"event_id": "a", "profile_id": 1}, {"event_id": "b", "profile_id": 2}])
    sql = "SELECT event_id, user_id FROM events ORDER BY event_id"
    assert q(event_store, sql) == [["a", 1], ["b", 2]]
    commit(event_store, [], offset=2, user_map={("p", 2): 1})
    assert q(event_store, sql) == [["a", 1], ["b", 1]]
    # Another project's map never applies here.
    commit(event_store, [], offset=3, user_map={("q", 1): 7})
    assert q(event_store, sql) == [["a", 1], ["b", 1]]
    # Mapping a profile to itself removes the merge (an unbind split it off).
    commit(event_store, [], offset=4, user_map={("p", 2): 2})
    assert q(event_store, sql) == [["a", 1], ["b", 2]]


def test_replica_upserts_and_deletes(event_store: EventStore) -> None:
    commit(event_store, [], profiles=[
        ProfileRow("p", 1, {"name": "Ann"}, T0, T0 + 5, 3),
        ProfileRow("p", 2, {"name": "Bob"}, T0, T0, 1),
        ProfileRow("q", 1, {"name": "other"}, T0, T0, 1),
    ], identities=[
        IdentityRow("p", "login_id", "ann", 1), IdentityRow("p", "cookie_id", "c2", 2),
    ], items=[
        ItemRow("p", "dish", "d1", {"price": 30}, T0), ItemRow("p", "dish", "d2", {}, T0),
    ])
    assert q(event_store, "SELECT user_id, properties, event_count FROM profiles ORDER BY 1") == [
        [1, {"name": "Ann"}, 3], [2, {"name": "Bob"}, 1]]
    # Merge 2 into 1: the loser's profile disappears, its identity moves.
    commit(event_store, [], offset=2, user_map={("p", 2): 1}, profiles=[
        ProfileRow("p", 1, {"name": "Ann", "vip": True}, T0, T0 + 9, 4),
        ProfileRow("p", 3, {}, None, None, 0, deleted=True),
    ], identities=[IdentityRow("p", "login_id", "ann", None)], items=[
        ItemRow("p", "dish", "d2", None, T0 + 1), ItemRow("p", "dish", "d1", {"price": 35}, T0 + 1),
    ])
    assert q(event_store, "SELECT user_id, properties, first_seen FROM profiles") == [
        [1, {"name": "Ann", "vip": True}, "2023-11-14T22:13:20.000Z"]]
    assert q(event_store, "SELECT * FROM identities") == [[1, "cookie_id", "c2"]]
    assert q(event_store, "SELECT item_id, properties, updated_at FROM items") == [
        ["d1", {"price": 35}, "2023-11-14T22:13:20.001Z"]]
    assert q(event_store, "SELECT count(*) FROM profiles", "q") == [[1]]


def test_replace_replica_rebuilds_one_project(event_store: EventStore) -> None:
    commit(event_store, [], profiles=[ProfileRow("p", 1, {}, T0, T0, 1),
                                      ProfileRow("q", 5, {}, T0, T0, 1)],
           user_map={("p", 9): 1})
    event_store.replace_replica(
        "p", [ProfileRow("p", 7, {"k": 1}, T0, T0, 2)],
        [IdentityRow("p", "email", "a@b.c", 7)], [ItemRow("p", "t", "i", {"x": 1}, T0)],
        user_map={8: 7},
    )
    assert q(event_store, "SELECT user_id, properties FROM profiles") == [[7, {"k": 1}]]
    assert q(event_store, "SELECT user_id, id_value FROM identities") == [[7, "a@b.c"]]
    assert q(event_store, "SELECT item_id FROM items") == [["i"]]
    assert q(event_store, "SELECT user_id FROM profiles", "q") == [[5]]
    commit(event_store, [{"profile_id": 8}], offset=2)
    assert q(event_store, "SELECT user_id FROM events") == [[7]]


def test_timeline_is_newest_first_across_merged_profiles(event_store: EventStore) -> None:
    commit(event_store, [
        {"event_id": "a", "profile_id": 1, "time": T0 + 10},
        {"event_id": "b", "profile_id": 2, "time": T0 + 30},
        {"event_id": "c", "profile_id": 1, "time": T0 + 20},
        {"event_id": "d", "profile_id": 3, "time": T0 + 40},
        {"event_id": "e", "profile_id": 1, "time": T0 + 50, "project": "q"},
    ], user_map={("p", 2): 1})
    tl = event_store.timeline("p", 1, limit=10)
    assert [r["event_id"] for r in tl.records()] == ["b", "c", "a"]
    assert {r["user_id"] for r in tl.records()} == {1}
    assert [r["event_id"] for r in event_store.timeline("p", 1, limit=2).records()] == ["b", "c"]
    older = event_store.timeline("p", 1, limit=10, before_ms=T0 + 30)
    assert [r["event_id"] for r in older.records()] == ["c", "a"]
    # Asking for a merged-away profile shows its survivor's timeline.
    assert [r["event_id"] for r in event_store.timeline("p", 2, limit=10).records()] == [
        "b", "c", "a"]


def test_scan_orders_by_user_then_time_and_filters(event_store: EventStore) -> None:
    commit(event_store, [
        {"event_id": "a", "profile_id": 2, "time": T0 + 5, "event": "buy"},
        {"event_id": "b", "profile_id": 1, "time": T0 + 9, "event": "view"},
        {"event_id": "c", "profile_id": 1, "time": T0 + 1, "event": "buy"},
        {"event_id": "d", "profile_id": 3, "time": T0 + 2, "event": "buy"},
        {"event_id": "e", "profile_id": 1, "time": T0 + 100, "event": "buy"},
    ], user_map={("p", 3): 1})
    t = event_store.scan("p", ["event_id", "user_id"])
    assert t.column("event_id").to_pylist() == ["c", "d", "b", "e", "a"]
    t = event_store.scan("p", ["event_id"], start_ms=T0 + 2, end_ms=T0 + 100, events=["buy"])
    assert t.column("event_id").to_pylist() == ["d", "a"]
    assert event_store.scan("p", ["event_id"], events=[]).num_rows == 0
    with pytest.raises(InvalidInput) as err:
        event_store.scan("p", ["event_id", "project"])
    assert err.value.field == "columns[1]"


def test_recent_event_ids_for_the_duplicate_filter(event_store: EventStore) -> None:
    commit(event_store, [
        {"event_id": "old", "received_at": T0 - 1000},
        {"event_id": "new", "received_at": T0, "project": "q"},
    ])
    t = event_store.recent_event_ids(T0 - 10)
    assert t.column_names == ["project", "event_id"]
    assert t.to_pylist() == [{"project": "q", "event_id": "new"}]


def test_max_rows_truncates(event_store: EventStore) -> None:
    commit(event_store, [{} for _ in range(50)])
    res = event_store.query("p", "SELECT event_id FROM events", timeout_s=10, max_rows=7)
    assert len(res.rows) == 7 and res.truncated
    res = event_store.query("p", "SELECT event_id FROM events", timeout_s=10, max_rows=50)
    assert len(res.rows) == 50 and not res.truncated


def test_arrow_returns_the_whole_result(event_store: EventStore) -> None:
    commit(event_store, [{"profile_id": i % 3} for i in range(30)])
    t = event_store.arrow("p", "SELECT user_id, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
                          timeout_s=10)
    assert t.to_pylist() == [{"user_id": i, "n": 10} for i in range(3)]


def test_refused_queries_raise_query_error(event_store: EventStore) -> None:
    for sql in ["DELETE FROM events", "SELECT * FROM tl_events", "SELECT 1; SELECT 2"]:
        with pytest.raises(QueryError):
            event_store.query("p", sql, timeout_s=5, max_rows=5)
    with pytest.raises(QueryError, match="failed"):
        event_store.query("p", "SELECT no_such_column FROM events", timeout_s=5, max_rows=5)


def test_long_query_times_out(event_store: EventStore) -> None:
    commit(event_store, [{} for _ in range(100)])
    sql = ("SELECT count(*) FROM events a, events b, events c, events d, events e,"
           " events f WHERE a.event_id || b.event_id || c.event_id <> f.event_id")
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        event_store.query("p", sql, timeout_s=0.3, max_rows=5)
    assert time.monotonic() - started < 5
    # A query that streams many rows is cut while the rows are being read.
    streaming = "SELECT a.event_id, b.event_id FROM events a, events b, events c, events d"
    with pytest.raises(QueryTimeout):
        event_store.query("p", streaming, timeout_s=0.3, max_rows=10**9)


def test_queries_run_while_ingest_commits(event_store: EventStore) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for n in range(1, 30):
                commit(event_store, [{"event_id": f"w{n}-{i}"} for i in range(100)], offset=n)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    counts = []
    while not stop.is_set():
        counts.append(q(event_store, "SELECT count(*) FROM events")[0][0])
    thread.join()
    assert not errors
    assert counts == sorted(counts)  # committed snapshots only, never going back
    assert all(c % 100 == 0 for c in counts)  # never half a batch
    assert q(event_store, "SELECT count(*) FROM events") == [[2900]]


def test_analysis_connection_sees_only_its_project(event_store: EventStore) -> None:
    commit(event_store, [{"project": "p", "profile_id": 2}, {"project": "q"}],
           user_map={("p", 2): 1})
    with event_store.connection_for_analysis("p") as conn:
        t = conn.arrow("SELECT user_id, count(*) AS n FROM events GROUP BY user_id")
    assert t.to_pylist() == [{"user_id": 1, "n": 1}]


def test_a_failed_commit_lands_nothing(event_store: EventStore) -> None:
    commit(event_store, [{"event_id": "ok"}], offset=5)
    # The events are fine; the profile's properties cannot be written (a set is not
    # JSON), which fails the commit after its events went in.
    with pytest.raises(StoreError):
        event_store.commit_batch(IngestBatch(events=events_table([{"event_id": "x"}]), offset=6,
                                             profiles=[ProfileRow("p", 1, {"x": {1}}, T0, T0, 1)]))
    assert event_store.get_offset() == 5
    assert q(event_store, "SELECT event_id FROM events") == [["ok"]]
    assert q(event_store, "SELECT count(*) FROM profiles") == [[0]]


def test_read_only_store_reads_but_does_not_write(tmp_path: Path) -> None:
    store = open_event_store(tmp_path)
    commit(store, [{"event_id": "a"}], offset=3)
    store.close()
    ro = open_event_store(tmp_path, read_only=True)
    try:
        assert ro.get_offset() == 3
        assert q(ro, "SELECT event_id FROM events") == [["a"]]
        with pytest.raises(StoreError):
            commit(ro, [], offset=4)
    finally:
        ro.close()


def test_unknown_backend_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown event store backend"):
        open_event_store(tmp_path, backend="oracle")


def test_append_of_20000_events_is_fast(event_store: EventStore) -> None:
    table = events_table([{} for _ in range(20_000)])
    commit(event_store, [], offset=1)
    best = float("inf")
    for n in range(3):
        started = time.perf_counter()
        event_store.commit_batch(IngestBatch(events=table, offset=n + 2))
        best = min(best, time.perf_counter() - started)
    assert best < 0.25, best  # tens of ms on a loaded 2-core box; ~15 ms idle


def test_clickhouse_drops_events_of_an_unfinished_commit(tmp_path: Path) -> None:
    pytest.importorskip("chdb")
    from touchline.store.events.clickhouse import ClickHouseEventStore

    store = ClickHouseEventStore(tmp_path / "ch")
    commit(store, [{"event_id": "a"}], offset=1)
    # A commit that died after writing its events, before its offsets.
    orphan = events_table([{"event_id": "b"}]).append_column(
        "_commit", pa.array([store._seq + 1], pa.uint64()))
    store._insert_arrow("tl_events", orphan, "*")
    assert q(store, "SELECT count(*) FROM events") == [[2]]
    store.close()
    store = ClickHouseEventStore(tmp_path / "ch")
    try:
        assert q(store, "SELECT event_id FROM events") == [["a"]]
        assert store.get_offset() == 1
        commit(store, [{"event_id": "c"}], offset=2)
        assert q(store, "SELECT event_id FROM events ORDER BY 1") == [["a"], ["c"]]
    finally:
        store.close()
