"""Identity stitching micro-benchmark.

Times ``apply_records`` over a batch of track events whose people are already known
(the ingest hot path), the same with a login and a cookie id on every event (the JS
SDK after login: a link each time, restating one that is already there), a batch of
new people, ``ensure_profiles`` for the bulk
importer, and ``lookup_profile`` once the store holds a million profiles, on SQLite. The peer, measured in the same run: the naive resolution of
the same events with one indexed SELECT per event.

    .venv/bin/python benchmarks/stitch.py [--events 20000] [--users 5000] [--bulk 1000000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from touchline.clock import VirtualClock
from touchline.store.state import open_state_store
from touchline.track.records import Record
from touchline.track.stitch import StitchPolicy, apply_records, ensure_profiles, lookup_profile


def track(n: int, users: int, prefix: str, rng: random.Random) -> list[Record]:
    return [
        Record(kind="track", project="default", event_id=f"{prefix}{i}",
               time_ms=1_700_000_000_000 + i, received_ms=1_700_000_000_000 + i,
               source="bench", event="view",
               identities={"anonymous_id": f"{prefix}-a{rng.randrange(users)}"})
        for i in range(n)
    ]


def linked(i: int, user: int) -> Record:
    return Record(kind="track", project="default", event_id=f"l{i}",
                  time_ms=1_700_000_000_000 + i, received_ms=1_700_000_000_000 + i,
                  source="bench", event="view", link=True,
                  identities={"login_id": f"u{user}", "anonymous_id": f"c{user}"})


def best_ms(store: Any, records: list[Record], policy: StitchPolicy) -> float:
    """The fastest of five applications of the same batch, in ms."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        with store.transaction() as tx:
            apply_records(tx, records, policy)
        runs.append((time.perf_counter() - t0) * 1000)
    return min(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--bulk", type=int, default=1_000_000)
    args = ap.parse_args()
    rng = random.Random(7)
    policy = StitchPolicy()
    with tempfile.TemporaryDirectory() as d:
        store = open_state_store("", Path(d), clock=VirtualClock(1_700_000_000_000))
        # Make every user known first.
        warm = [Record(kind="track", project="default", event_id=f"w{i}", time_ms=1, received_ms=1,
                       source="bench", event="view", identities={"anonymous_id": f"k-a{i}"})
                for i in range(args.users)]
        t0 = time.perf_counter()
        with store.transaction() as tx:
            apply_records(tx, warm, policy)
        new_ms = (time.perf_counter() - t0) * 1000

        batch = track(args.events, args.users, "k", rng)
        known_ms = best_ms(store, batch, policy)

        # People with a login and a cookie id, linked once; then events restating it.
        with store.transaction() as tx:
            apply_records(tx, [linked(i, i) for i in range(args.users)], policy)
        linked_ms = best_ms(store, [linked(args.users + i, rng.randrange(args.users))
                                    for i in range(args.events)], policy)

        t0 = time.perf_counter()
        with store.transaction() as tx:
            for r in batch:
                tx.fetchone(
                    "SELECT p.survivor FROM identities i JOIN profiles p ON p.user_id = i.user_id "
                    "WHERE i.project = ? AND i.id_type = ? AND i.id_value = ?",
                    ("default", "anonymous_id", r.identities["anonymous_id"]),
                )
        naive_ms = (time.perf_counter() - t0) * 1000

        values = [f"bulk-{i}" for i in range(args.bulk)]
        t0 = time.perf_counter()
        with store.transaction() as tx:
            ensure_profiles(tx, "default", "anonymous_id", values, seen_ms=[1] * len(values))
        bulk_new_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with store.transaction() as tx:
            ensure_profiles(tx, "default", "anonymous_id", values, seen_ms=[1] * len(values))
        bulk_known_s = time.perf_counter() - t0

        lookups = []
        for i in range(2000):
            value = values[rng.randrange(len(values))]
            ident = value if i % 2 else f"anonymous_id:{value}"
            t0 = time.perf_counter()
            with store.transaction(read_only=True) as tx:
                view = lookup_profile(tx, "default", ident)
            lookups.append((time.perf_counter() - t0) * 1000)
            assert view is not None
        lookups.sort()
        p50, p99 = lookups[len(lookups) // 2], lookups[int(len(lookups) * 0.99)]
        store.close()

    print(f"apply_records, {args.users:,} new people:                 {new_ms:8.1f} ms")
    print(f"apply_records, {args.events:,} events of {args.users:,} known people: "
          f"{known_ms:8.1f} ms  ({args.events / known_ms * 1000:,.0f} events/s)")
    print(f"apply_records, {args.events:,} events restating a known link:  "
          f"{linked_ms:8.1f} ms  ({args.events / linked_ms * 1000:,.0f} events/s)")
    print(f"peer: one SELECT per event, same events:        {naive_ms:8.1f} ms  "
          f"(apply_records is {naive_ms / known_ms:.1f}x faster, and also writes)")
    print(f"ensure_profiles, {args.bulk:,} new values:          {bulk_new_s:8.2f} s")
    print(f"ensure_profiles, {args.bulk:,} known values:        {bulk_known_s:8.2f} s")
    print(f"lookup_profile among {args.users + args.bulk:,} profiles: p50 {p50:.2f} ms, "
          f"p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
