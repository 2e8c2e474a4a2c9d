"""Bulk import: bad lines reported by line number, good ones stitched and loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from touchline.clock import VirtualClock
from touchline.errors import InvalidInput
from touchline.store.events import EventStore, open_event_store
from touchline.store.state import open_state_store
from touchline.track import importer
from touchline.track.importer import ImportReport, import_files

NOW = 1_763_800_000_000
DAY = 86_400_000


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[EventStore, Any]]:
    events = open_event_store(tmp_path / "data")
    state = open_state_store("", tmp_path / "data")
    try:
        yield events, state
    finally:
        events.close()
        state.close()


def write_ndjson(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run(stores: tuple[EventStore, Any], path: Path, fmt: str, **kw: Any) -> ImportReport:
    events, state = stores
    return import_files([path], project="default", fmt=fmt, event_store=events,
                        state_store=state, clock=VirtualClock(NOW), **kw)


def rows(stores: tuple[EventStore, Any], sql: str) -> list[list[Any]]:
    return stores[0].query("default", sql, timeout_s=10, max_rows=10_000).rows


def issues(report: ImportReport) -> list[tuple[int, str, str]]:
    return [(i.line, i.field, i.rule) for i in report.issues]


def track(event: str, did: str, t: int = NOW - 1000, **props: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "distinct_id": did, "time": t,
            "properties": props, "lib": {"$lib": "python", "$lib_version": "1.11.0"}}


def test_sensors_bad_lines_are_reported_and_good_ones_loaded(
    stores: tuple[EventStore, Any], tmp_path: Path
) -> None:
    path = write_ndjson(tmp_path / "s.ndjson", [
        track("view_item", "anon1", price=3),                        # 1
        b"{not json",                                                # 2
        track("bad name", "a1"),                                     # 3
        {"type": "track_signup", "event": "$SignUp", "time": NOW - 500,
         "distinct_id": "u1", "original_id": "anon1", "properties": {}},  # 4
        track("submit_order", "u1", **{"$is_login_id": True, "amount": 5}),  # 5
        {"type": "profile_set", "time": NOW, "distinct_id": "u1",
         "properties": {"name": "Ann", "$is_login_id": True}},      # 6
        track("view_item", "null"),                                  # 7
        track("view_item", "a2", time=1),                            # 8: reserved name
        track("view_item", "a3", t=NOW - 3 * 365 * DAY),             # 9: too old
        {"type": "item_set", "time": NOW, "item_type": "dish", "item_id": "d1",
         "properties": {"price": 30}},                               # 10
        b"",                                                         # 11: blank
        track("view_item", "x" * 256),                               # 12
        track("view_item", "a4", nested={"a": 1}),                   # 13
        {**track("view_item", "a5", t=NOW - 3 * 365 * DAY), "time_free": True},  # 14
    ])
    report = run(stores, path, "sensors")
    assert issues(report) == [
        (2, "record", "not valid JSON"),
        (3, "event", "must match [a-zA-Z_$][a-zA-Z0-9_$]{0,99}"),
        (7, "distinct_id", "junk id 'null' refused"),
        (8, "properties.time", "reserved property name"),
        (9, "time", "more than 2 years in the past (set time_free to keep it)"),
        (12, "distinct_id", "longer than 255 characters"),
        (13, "properties.nested", "objects are not allowed as property values"),
    ]
    assert (report.lines, report.loaded, report.rejected, report.blank) == (14, 4, 7, 1)
    got = rows(stores, "SELECT event, user_id, distinct_id, properties FROM events ORDER BY time")
    by_did = {r[2]: r for r in got}
    anon_user = by_did["anon1"][1]
    assert by_did["u1"][1] == anon_user  # the sign-up stitched them
    assert by_did["a5"][1] != anon_user
    assert by_did["anon1"][3] == {"price": 3, "$lib": "python", "$lib_version": "1.11.0"}
    assert by_did["a5"][3] == {"$lib": "python", "$lib_version": "1.11.0"}
    assert sorted(r[0] for r in got) == ["$SignUp", "submit_order", "view_item", "view_item"]
    # The replica follows the state store.
    assert rows(stores, f"SELECT properties, event_count FROM profiles WHERE user_id = {anon_user}"
                ) == [[{"name": "Ann"}, 3]]
    assert rows(stores, "SELECT id_type, id_value FROM identities"
                f" WHERE user_id = {anon_user} ORDER BY 1") == [
        ["anonymous_id", "anon1"], ["login_id", "u1"]]
    assert rows(stores, "SELECT item_id, properties FROM items") == [["d1", {"price": 30}]]


def test_event_ids_match_the_collector(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    from touchline.track.decode import content_hash

    record = track("view_item", "anon9", price=1)
    with_flush = {**record, "_flush_time": NOW}
    report = run(stores, write_ndjson(tmp_path / "s.ndjson", [with_flush]), "sensors")
    assert report.loaded == 1
    assert rows(stores, "SELECT event_id FROM events") == [[content_hash(record)]]


def test_importing_twice_loads_nothing_new(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "s.ndjson", [track("a", f"d{i}") for i in range(50)]
                        + [track("a", "d0")])  # an exact resend inside the file
    first = run(stores, path, "sensors")
    assert (first.loaded, first.duplicates) == (50, 1)
    second = run(stores, path, "sensors")
    assert (second.loaded, second.duplicates) == (0, 51)
    assert rows(stores, "SELECT count(*), count(DISTINCT user_id) FROM events") == [[50, 50]]
    assert rows(stores, "SELECT sum(event_count) FROM profiles") == [[50]]


@pytest.mark.parametrize(("workers", "fast"), [(1, True), (1, False), (2, False)],
                         ids=["fast", "python", "processes"])
def test_small_chunks_keep_line_numbers(
    stores: tuple[EventStore, Any], tmp_path: Path, workers: int, fast: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importer, "POOL_MIN_LINES", 1)
    records: list[Any] = [track("ok", f"d{i}") for i in range(300)]
    for bad in (7, 150, 299):
        records[bad] = track("no good", "x")
    records[200] = b"{broken"
    records[199] = track("view_item", "null")  # refused by the decoder, before 201
    report = run(stores, write_ndjson(tmp_path / "s.ndjson", records), "sensors",
                 chunk_bytes=3000, workers=workers, fast=fast)
    assert [i.line for i in report.issues] == [8, 151, 200, 201, 300]
    assert report.loaded == 295 and report.lines == 300
    assert ("parse_wait" in report.timings) == (workers > 1)
    assert rows(stores, "SELECT count(*), count(DISTINCT user_id) FROM events") == [[295, 295]]


def test_links_and_profile_operations_decoded_in_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lines the bulk checks leave (links, sign-ups, profile and item operations,
    # refusals) are decoded in the worker processes: the result is the one of a
    # single-process import, refusals included.
    monkeypatch.setattr(importer, "POOL_MIN_LINES", 1)
    records: list[Any] = []
    for i in range(40):
        records += [
            track("view_item", f"c{i}"),
            {"type": "track_signup", "event": "$SignUp", "time": NOW - 900 + i,
             "distinct_id": f"u{i}", "original_id": f"c{i}", "properties": {}},
            {"type": "track", "event": "pay", "time": NOW - 800 + i, "distinct_id": f"u{i}",
             "identities": {"$identity_login_id": f"u{i}", "$identity_cookie_id": f"c{i}"},
             "properties": {"amount": i}},
            {"type": "profile_increment", "time": NOW - 700 + i, "distinct_id": f"u{i}",
             "properties": {"visits": 1, "$is_login_id": True}},
            {"type": "item_set", "item_type": "dish", "item_id": f"d{i % 7}", "time": NOW,
             "properties": {"price": i}},
            {"type": "profile_set", "time": NOW, "distinct_id": f"u{i}",
             "properties": {"date": "x"}},  # a reserved name: refused
        ]
    path = write_ndjson(tmp_path / "mixed.ndjson", records)
    results = []
    for workers in (1, 2):
        data = tmp_path / f"data{workers}"
        stores = (open_event_store(data), open_state_store("", data))
        try:
            report = run(stores, path, "sensors", chunk_bytes=2000, workers=workers)
            assert ("parse_wait" in report.timings) == (workers > 1)
            results.append((
                issues(report), report.loaded,
                rows(stores, "SELECT event, distinct_id, user_id FROM events ORDER BY time"),
                rows(stores, "SELECT user_id, properties, event_count FROM profiles ORDER BY 1"),
                rows(stores, "SELECT id_type, id_value, user_id FROM identities ORDER BY 1, 2"),
                rows(stores, "SELECT item_id, properties FROM items ORDER BY 1"),
            ))
        finally:
            stores[0].close()
            stores[1].close()
    single, pooled = results
    assert pooled == single
    found, loaded, events, profiles, identities, items = pooled
    assert [line for line, _, _ in found] == [6 * i + 6 for i in range(40)]
    assert loaded == len(events) == 120
    assert len(profiles) == 40 and {p[2] for p in profiles} == {3}
    assert {p[1]["visits"] for p in profiles} == {1}
    assert len(identities) == 120 and len(items) == 7  # anonymous, login and cookie ids


def test_event_counts_folded_and_written_mid_import_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Per-chunk counts are folded into one row per profile, and written to the
    # state store when too many profiles wait: the totals are those of one write.
    records = [track("view_item", f"d{(i * 7) % 40}", t=NOW - 100_000 + (i * 37) % 5000)
               for i in range(200)]
    path = write_ndjson(tmp_path / "s.ndjson", records)
    sql = ("SELECT i.id_value, p.event_count, p.first_seen, p.last_seen FROM profiles p"
           " JOIN identities i ON i.user_id = p.user_id ORDER BY 1")
    results = []
    for name, compact, pending in (("once", 10**9, 10**9), ("folded", 3, 10**9),
                                   ("written", 3, 5)):
        monkeypatch.setattr(importer, "COMPACT_ROWS", compact)
        monkeypatch.setattr(importer, "MAX_PENDING_ROWS", pending)
        data = tmp_path / name
        stores = (open_event_store(data), open_state_store("", data))
        try:
            assert run(stores, path, "sensors", chunk_bytes=4000, workers=1).loaded == 200
            results.append(rows(stores, sql))
        finally:
            stores[0].close()
            stores[1].close()
    assert len(results[0]) == 40 and sum(r[1] for r in results[0]) == 200
    assert results[1] == results[0] and results[2] == results[0]


def test_progress_is_reported(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    seen: list[int] = []
    path = write_ndjson(tmp_path / "s.ndjson", [track("ok", f"d{i}") for i in range(100)])
    events, state = stores
    import_files([path], project="default", fmt="sensors", event_store=events,
                 state_store=state, clock=VirtualClock(NOW), chunk_bytes=2000,
                 progress=lambda p: seen.append(p.lines))
    assert len(seen) > 2 and seen == sorted(seen) and seen[-1] == 100


def test_segment_ndjson(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "seg.ndjson", [
        {"type": "track", "event": "Order Completed", "anonymousId": "an1",
         "messageId": "m1", "timestamp": "2025-11-20T10:00:00Z", "properties": {"total": 9}},
        {"type": "identify", "userId": "u7", "anonymousId": "an1", "messageId": "m2",
         "timestamp": "2025-11-20T10:01:00Z", "traits": {"plan": "gold"}},
        {"type": "track", "event": "x", "messageId": "m3", "timestamp": "2025-11-20T10:02:00Z"},
        b"[1, 2",
    ])
    report = run(stores, path, "segment")
    assert [(i.line, i.field) for i in report.issues] == [(3, "userId"), (4, "record")]
    assert rows(stores, "SELECT event_id, event, time, properties FROM events") == [
        ["m1", "Order Completed", "2025-11-20T10:00:00.000Z", {"total": 9}]]
    assert rows(stores, "SELECT properties FROM profiles") == [[{"plan": "gold"}]]


def test_csv_rows_checked_in_sql(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        "event,distinct_id,time,amount,bad name,city\n"
        "buy,u1,2025-11-21T10:00:00,30,x,SH\n"
        "bad event,u2,2025-11-21T10:00:00,1,x,BJ\n"
        "buy,null,2025-11-21T10:00:00,1,x,BJ\n"
        "buy,u3,not a time,1,x,BJ\n"
        "view,u1,2025-11-21T11:00:00,,x,\n"
    )
    report = run(stores, path, "csv")
    assert issues(report) == [
        (1, "properties.bad name", "property name must match [a-zA-Z_$][a-zA-Z0-9_$]{0,99}"),
        (3, "event", "must match [a-zA-Z_$][a-zA-Z0-9_$]{0,99}"),
        (4, "distinct_id", "junk id 'null' refused"),
        (5, "time", "must be milliseconds since the epoch or an ISO 8601 time"),
    ]
    assert report.loaded == 2
    assert rows(stores, "SELECT event, time, properties FROM events ORDER BY time") == [
        ["buy", "2025-11-21T10:00:00.000Z", {"amount": 30, "city": "SH"}],
        ["view", "2025-11-21T11:00:00.000Z", {"amount": None, "city": None}],
    ]
    assert rows(stores, "SELECT count(DISTINCT user_id) FROM events") == [[1]]


def test_parquet_with_millisecond_times(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({
        "event": ["buy", "buy", None],
        "distinct_id": ["u1", "u2", "u3"],
        "time": [NOW - 10, NOW + 2 * 3_600_000, NOW],
        "price": [1.5, 2.0, 3.0],
    }), path)
    report = run(stores, path, "parquet")
    assert issues(report) == [
        (2, "time", "more than 1 hour in the future (set time_free to keep it)"),
        (3, "event", "must be a string"),
    ]
    assert rows(stores, "SELECT distinct_id, properties FROM events") == [["u1", {"price": 1.5}]]
    # Without the time window the future row is kept.
    report = run(stores, path, "parquet", time_window=False)
    assert report.loaded == 1 and report.duplicates == 1


def test_missing_column_and_unknown_format(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("event,time\nbuy,1\n")
    report = run(stores, path, "csv")
    assert issues(report) == [(1, "distinct_id", "missing column")]
    with pytest.raises(InvalidInput) as err:
        run(stores, path, "xml")
    assert err.value.field == "fmt"
    with pytest.raises(InvalidInput) as err:
        run(stores, tmp_path / "missing.ndjson", "sensors")
    assert err.value.field == "paths[0]"


def test_id_mapping_3_records_load_in_bulk(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    js = {**track("view_item", "c9"), "identities": {"$identity_cookie_id": "c9"},
          "anonymous_id": "c9"}
    bound = {**track("view_item", "c10"), "identities": {"$identity_cookie_id": "c10"},
             "login_id": "u10"}  # a second identity: stitched through apply_records
    report = run(stores, write_ndjson(tmp_path / "s.ndjson", [js, bound]), "sensors")
    assert (report.loaded, report.rejected) == (2, 0)
    assert rows(stores, "SELECT id_type, id_value FROM identities ORDER BY 2") == [
        ["cookie_id", "c10"], ["cookie_id", "c9"], ["login_id", "u10"]]
    assert rows(stores, "SELECT count(DISTINCT user_id) FROM events") == [[2]]


def test_counts_and_seen_times_across_chunks(
    stores: tuple[EventStore, Any], tmp_path: Path
) -> None:
    records = [track("view_item", f"d{i % 10}", t=NOW - 10_000 + i) for i in range(200)]
    report = run(stores, write_ndjson(tmp_path / "s.ndjson", records), "sensors",
                 chunk_bytes=2500, workers=1)
    assert report.loaded == 200
    got = rows(stores, "SELECT event_count, first_seen, last_seen FROM profiles ORDER BY 2")
    assert len(got) == 10
    assert {r[0] for r in got} == {20}
    # d0: events 0, 10, ..., 190 after NOW - 10 s.
    assert got[0][1:] == ["2025-11-22T08:26:30.000Z", "2025-11-22T08:26:30.190Z"]
    assert rows(stores, "SELECT count(DISTINCT user_id) FROM events") == [[10]]


def test_import_into_the_clickhouse_store(tmp_path: Path) -> None:
    pytest.importorskip("chdb")
    events = open_event_store(tmp_path / "data", backend="clickhouse")
    state = open_state_store("", tmp_path / "data")
    try:
        path = write_ndjson(tmp_path / "s.ndjson", [
            track("view_item", "anon1"), track("bad name", "a"),
            {"type": "track_signup", "event": "$SignUp", "time": NOW - 500,
             "distinct_id": "u1", "original_id": "anon1", "properties": {}},
        ])
        report = run((events, state), path, "sensors")
        assert (report.loaded, report.rejected) == (2, 1)
        assert rows((events, state), "SELECT count(DISTINCT user_id) FROM events") == [[1]]
        assert rows((events, state), "SELECT event_count FROM profiles") == [[2]]
    finally:
        events.close()
        state.close()


def test_an_unbind_moves_later_events_only(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    ids = {"$identity_login_id": "u1", "$identity_cookie_id": "c1"}
    records: list[Any] = [
        {"type": "track_id_bind", "event": "$BindID", "time": NOW - 900, "distinct_id": "u1",
         "identities": ids, "properties": {}},
        *[{**track("view_item", "c1", t=NOW - 800 + i), "identities": {"cookie_id": "c1"}}
          for i in range(3)],
        {"type": "track_id_unbind", "event": "$UnbindID", "time": NOW - 500,
         "distinct_id": "u1", "identities": {"$identity_cookie_id": "c1"}, "properties": {}},
        *[{**track("view_item", "c1", t=NOW - 400 + i), "identities": {"cookie_id": "c1"}}
          for i in range(3)],
    ]
    # Small chunks: the unbind is applied between the two groups of events.
    report = run(stores, write_ndjson(tmp_path / "s.ndjson", records), "sensors",
                 chunk_bytes=700, workers=1)
    assert report.rejected == 0
    got = rows(stores, "SELECT time, user_id FROM events WHERE event = 'view_item' ORDER BY time")
    before = {r[1] for r in got[:3]}
    after = {r[1] for r in got[3:]}
    assert len(before) == 1 and len(after) == 1 and before != after


def test_fast_and_python_paths_load_the_same(tmp_path: Path) -> None:
    """The DuckDB fast path and the per-line Python pass give the same import."""
    records: list[Any] = []
    for i in range(400):
        rec = track(["view_item", "pay", "bad name"][i % 3 if i % 17 == 0 else i % 2],
                    f"d{i % 37}", t=NOW - 1000 * i, price=i * 0.5, n=i,
                    **({"$is_login_id": True} if i % 5 == 0 else {}))
        if i % 11 == 0:
            rec["_flush_time"] = NOW
        records.append(rec if i % 13 else orjson.dumps(rec, option=orjson.OPT_INDENT_2)
                       .replace(b"\n", b""))
    records[50] = {"type": "track_signup", "event": "$SignUp", "time": NOW - 5, "distinct_id": "u1",
                   "original_id": "d3", "properties": {}}
    records[60] = b"{broken"
    path = write_ndjson(tmp_path / "s.ndjson", records)
    got = []
    for fast in (True, False):
        data = tmp_path / f"data-{fast}"
        events = open_event_store(data)
        state = open_state_store("", data)
        try:
            report = import_files([path], project="default", fmt="sensors", event_store=events,
                                  state_store=state, clock=VirtualClock(NOW), chunk_bytes=9000,
                                  workers=1, fast=fast)
            table = events.query("default", "SELECT event_id, event, distinct_id, time, properties,"
                                 " user_id FROM events ORDER BY event_id", timeout_s=10,
                                 max_rows=10_000).rows
        finally:
            events.close()
            state.close()
        # Profile ids are numbered in a different order: compare who is stitched to whom.
        people: dict[int, set[str]] = {}
        for row in table:
            people.setdefault(row[5], set()).add(row[0])
        got.append((issues(report), report.loaded, report.duplicates,
                    [row[:5] for row in table], sorted(sorted(p) for p in people.values())))
    assert got[0][1] > 300
    assert got[0] == got[1]


def test_collector_thresholds_are_restored(stores: tuple[EventStore, Any], tmp_path: Path) -> None:
    import gc

    before = gc.get_threshold()
    path = write_ndjson(tmp_path / "a.ndjson", [track("view_menu", "d1"), b"{bad"])
    report = run(stores, path, "sensors")
    assert (report.loaded, report.rejected) == (1, 1)
    assert gc.get_threshold() == before
