"""Bulk import speed: `import_files` on Sensors NDJSON against DuckDB's own read_json.

Generates N Sensors track records (default 2,000,000; about 100,000 users, some
records with a login flag), then in the same run times

- DuckDB ``read_json`` of the file into a table (the peer: parsing alone),
- the floor of any import into a durable store: one DuckDB statement that parses the
  file and inserts it into an on-disk table shaped like the event store's (no
  validation, no duplicate check, no stitching, DuckDB's own 64-bit hash as the id),
  then checkpoints it, and
- ``import_files`` of the file into a fresh data directory (parse, validate, hash
  the event ids, stitch into the state store, append to the event store),

and prints events/s of each and the ratios. Run: python benchmarks/import_.py [-n N]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import orjson

from touchline.clock import VirtualClock
from touchline.store.events import open_event_store
from touchline.store.state import open_state_store
from touchline.track.importer import import_files

NOW = 1_763_800_000_000
EVENTS = ["app_launch", "view_item", "add_to_cart", "submit_order", "pay_order"]


def generate(path: Path, n: int, users: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        batch: list[bytes] = []
        for i in range(n):
            uid = rng.randrange(users)
            login = uid % 3 == 0
            record = {
                "type": "track", "event": EVENTS[i % len(EVENTS)],
                "time": NOW - rng.randrange(90 * 86_400_000),
                "distinct_id": f"user{uid}" if login else f"anon-{uid:08x}",
                "lib": {"$lib": "python", "$lib_version": "1.11.0", "$lib_method": "code"},
                "properties": {"$is_login_id": login, "$os": "iOS", "$app_version": "3.2.1",
                               "price": rng.randrange(1, 500), "store_id": f"s{uid % 300}",
                               "channel": "app"},
            }
            batch.append(orjson.dumps(record))
            if len(batch) == 10_000:
                f.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            f.write(b"\n".join(batch) + b"\n")


# The event store's table (see touchline.store.events.duckdb), for the floor.
_EVENTS_DDL = (
    "CREATE TABLE tl_events (project VARCHAR NOT NULL, event_id VARCHAR NOT NULL,"
    " event VARCHAR, profile_id BIGINT, distinct_id VARCHAR, time TIMESTAMP,"
    " received_at TIMESTAMP, source VARCHAR, properties JSON)"
)


def _floor(path: Path, db: Path) -> float:
    """Seconds to parse the file and store it durably, with nothing in between."""
    con = duckdb.connect(str(db))
    try:
        con.execute(_EVENTS_DDL)
        started = time.perf_counter()
        con.execute(
            "INSERT INTO tl_events SELECT 'default', hash(r)::VARCHAR, r.event, 0,"
            " r.distinct_id, epoch_ms(r.time), now()::TIMESTAMP, 'sensors',"
            " to_json(r.properties) FROM read_json(?, format = 'newline_delimited') AS r",
            [str(path)])
        con.execute("CHECKPOINT")
        return time.perf_counter() - started
    finally:
        con.close()
        db.unlink(missing_ok=True)


@contextmanager
def _state_url(url: str) -> Iterator[str]:
    if not url.startswith("postgresql://"):
        yield url
        return
    import psycopg

    schema = f"bench_import_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--events", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--state-url", default="",
                        help="state store URL (default: SQLite in the temp data dir); a "
                             "postgresql:// URL gets a fresh schema, dropped afterwards")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="touchline-import-bench-") as tmp:
        root = Path(tmp)
        path = root / "sensors.ndjson"
        started = time.perf_counter()
        generate(path, args.events, args.users)
        print(f"generated {args.events:,} records ({path.stat().st_size / 1e6:.0f} MB)"
              f" in {time.perf_counter() - started:.1f} s")

        con = duckdb.connect()
        started = time.perf_counter()
        con.execute("CREATE TABLE t AS SELECT * FROM read_json(?, format = 'newline_delimited')",
                    [str(path)])
        peer_s = time.perf_counter() - started
        rows = con.execute("SELECT count(*) FROM t").fetchone()
        con.close()
        assert rows is not None and rows[0] == args.events

        floor_s = _floor(path, root / "floor.duckdb")

        with _state_url(args.state_url) as url:
            events = open_event_store(root / "data")
            state = open_state_store(url, root / "data")
            try:
                with state.transaction() as tx:
                    if tx.get_project("default") is None:
                        tx.create_project("default")
                cpu_started = time.process_time()
                report = import_files([path], project="default", fmt="sensors",
                                      event_store=events, state_store=state,
                                      clock=VirtualClock(NOW), workers=args.workers)
                cpu_s = time.process_time() - cpu_started
            finally:
                events.close()
                state.close()
        assert report.loaded == args.events, report.as_dict()

    peer_rate = args.events / peer_s
    ours = report.events_per_s
    print(f"duckdb read_json : {peer_s:7.2f} s  {peer_rate:12,.0f} events/s")
    print(f"import_files     : {report.seconds:7.2f} s  {ours:12,.0f} events/s"
          f"  (target 500,000); CPU {cpu_s:.2f} s (all threads)")
    print(f"ratio import/read_json: {ours / peer_rate:.2f}  (target >= 0.5)")
    floor_rate = args.events / floor_s
    print(f"floor (read_json + insert into an on-disk events table, nothing else): "
          f"{floor_s:.2f} s  {floor_rate:,.0f} events/s, ratio floor/read_json "
          f"{floor_rate / peer_rate:.2f}, import/floor {ours / floor_rate:.2f}")
    # Phases overlap (the fast path runs a chunk ahead in a thread): they add up to
    # more than the total.
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(report.timings.items()))
    print(f"import phases: {phases}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
