"""Benchmark: real-time segment updates at 1,000 events/s, against periodic recomputation.

    .venv/bin/python benchmarks/audiences.py [--users 100000] [--history 1000000]
                                             [--seconds 20] [--rate 1000] [--state URL]

Loads ``--users`` profiles and ``--history`` past events into the real DuckDB event
store, saves five dynamic segments (windows, aggregates, traits, nesting, a segment
on a segment), then feeds new events at ``--rate`` per second in 50 ms batches (the
ingest pipeline's default commit interval). For each batch it measures the time from
the event store commit to the enter/exit signals being committed and delivered: the
real-time update latency, reported as p50/p99.

The peer is what polling systems do (Dittofeed recomputes every segment every two
minutes): one full recomputation of all five segments over the same data, timed in
the same run. Its time is a lower bound of their latency; the ratio is printed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from touchline.clock import SystemClock
from touchline.orchestrate import audience_hooks
from touchline.orchestrate.audience_engine import AudienceEngine, Signal
from touchline.orchestrate.audience_reader import StoreEventReader
from touchline.orchestrate.audience_worker import RealtimeWorker
from touchline.store.batch import EVENT_SCHEMA, IngestBatch, ProfileRow
from touchline.store.events.duckdb import DuckDBEventStore
from touchline.store.state import open_state_store

DAY = 86_400_000
SEGMENTS: list[dict[str, Any]] = [
    {"name": "active 7d", "conditions": {"performed": "order", "op": ">=", "value": 2,
                                         "within": "7d"}},
    {"name": "big spenders", "conditions": {
        "performed": "order", "aggregate": {"sum": "amount"}, "op": ">=", "value": 300,
        "within": "30d", "where": [{"property": "channel", "op": "in",
                                    "value": ["app", "mini"]}]}},
    {"name": "dormant", "conditions": {"all": [
        {"last_performed": "view", "more_than": "3d"}, {"not_performed": "order", "within": "14d"}]}},
    {"name": "sh families", "conditions": {"all": [
        {"trait": "city", "value": "SH"}, {"trait": "group", "value": "family"},
        {"performed": "view", "within": "1d"}]}},
    {"name": "sh big spenders", "conditions": {"all": [
        {"in_segment": "big spenders"}, {"trait": "city", "value": "SH"}]}},
]


def events_table(rows: list[tuple[int, str, int, str]]) -> pa.Table:
    n = len(rows)
    return pa.table({
        "project": ["default"] * n,
        "event_id": [uuid.uuid4().hex for _ in range(n)],
        "event": [r[1] for r in rows],
        "profile_id": [r[0] for r in rows],
        "distinct_id": [str(r[0]) for r in rows],
        "time": pa.array([r[2] for r in rows], pa.timestamp("ms")),
        "received_at": pa.array([r[2] for r in rows], pa.timestamp("ms")),
        "source": ["bench"] * n,
        "properties": [r[3] for r in rows],
    }, schema=EVENT_SCHEMA)


def random_event(rng: random.Random, users: int, t: int) -> tuple[int, str, int, str]:
    ev = "order" if rng.random() < 0.3 else "view"
    props = {"amount": rng.choice([50, 100, 200]), "channel": rng.choice(["app", "mini", "sms"])}
    return (rng.randrange(users), ev, t, orjson.dumps(props).decode())


def load(store: DuckDBEventStore, users: int, history: int, now: int) -> None:
    rng = np.random.default_rng(7)
    cities, groups = ["SH", "BJ", "GZ"], ["family", "white-collar", "student"]
    profiles = [ProfileRow("default", u, {"city": cities[u % 3], "group": groups[u % 7 % 3]},
                           None, None, 0) for u in range(users)]
    store.commit_batch(IngestBatch(events_table([]), 1, profiles=profiles))
    chunk = 200_000
    for start in range(0, history, chunk):
        n = min(chunk, history - start)
        uids = rng.integers(0, users, n)
        times = now - rng.integers(0, 30 * DAY, n)
        kinds = np.where(rng.random(n) < 0.3, "order", "view")
        amounts = rng.choice([50, 100, 200], n)
        chans = rng.choice(["app", "mini", "sms"], n)
        props = [f'{{"amount":{a},"channel":"{c}"}}' for a, c in zip(amounts, chans, strict=True)]
        table = pa.table({
            "project": ["default"] * n, "event_id": [f"h{start + i}" for i in range(n)],
            "event": kinds.tolist(), "profile_id": uids.tolist(),
            "distinct_id": [str(u) for u in uids.tolist()],
            "time": pa.array(times.tolist(), pa.timestamp("ms")),
            "received_at": pa.array(times.tolist(), pa.timestamp("ms")),
            "source": ["bench"] * n, "properties": props,
        }, schema=EVENT_SCHEMA)
        store.commit_batch(IngestBatch(table, 0), offset_name=None)


class _TimedWorker(RealtimeWorker):
    """Records, per submitted batch, the time until its evaluation finished."""

    def __init__(self, engine: AudienceEngine) -> None:
        super().__init__(engine)
        self.latencies: list[float] = []
        self.drains: list[tuple[float, int]] = []
        self._submitted: list[float] = []
        self._times_lock = threading.Lock()

    def submit(self, events: Any) -> None:
        with self._times_lock:
            self._submitted.append(time.perf_counter())
        super().submit(events)

    def _drain(self) -> None:
        with self._times_lock:
            batch, self._submitted = self._submitted, []
        start = time.perf_counter()
        super()._drain()
        done = time.perf_counter()
        self.drains.append((done - start, len(batch)))
        self.latencies += [done - t for t in batch]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--history", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--state", default="", help="State store URL (default: SQLite).")
    args = ap.parse_args()

    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        events = DuckDBEventStore(Path(tmp) / "events.duckdb")
        state = open_state_store(args.state, Path(tmp), clock=clock)
        for name, ddl in audience_hooks.state_schema().items():
            state.ensure_schema(name, ddl)
        t = time.perf_counter()
        load(events, args.users, args.history, clock.now_ms())
        print(f"loaded {args.users:,} profiles, {args.history:,} events "
              f"in {time.perf_counter() - t:.1f} s")

        engine = AudienceEngine(state, StoreEventReader(events), clock)
        delivered: list[Signal] = []
        engine.subscribe(delivered.extend)
        t = time.perf_counter()
        for definition in SEGMENTS:
            engine.save("default", definition)
        print(f"saved and computed {len(SEGMENTS)} segments in {time.perf_counter() - t:.2f} s")

        # The peer: one full recomputation of every segment (what a poller does).
        full: list[float] = []
        for _ in range(2):
            t = time.perf_counter()
            engine.compute_all("default")
            full.append(time.perf_counter() - t)

        rng = random.Random(11)
        interval = 0.05
        per_batch = max(1, round(args.rate * interval))
        latencies: list[float] = []
        sent = 0
        next_at = time.perf_counter()
        end = next_at + args.seconds
        while next_at < end:
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            now = clock.now_ms()
            table = events_table([random_event(rng, args.users, now) for _ in range(per_batch)])
            events.commit_batch(IngestBatch(table, 0), offset_name=None)
            t = time.perf_counter()
            engine.on_events(table.append_column("user_id", table.column("profile_id")))
            latencies.append(time.perf_counter() - t)
            sent += per_batch
            next_at += interval
        # The same load through the optional real-time worker (the ingest thread only
        # queues); time is from commit to the end of the evaluation that covered it.
        worker = _TimedWorker(engine)
        worker.start()
        queued: list[float] = []
        next_at = time.perf_counter()
        end = next_at + args.seconds
        while next_at < end:
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            now = clock.now_ms()
            table = events_table([random_event(rng, args.users, now) for _ in range(per_batch)])
            events.commit_batch(IngestBatch(table, 0), offset_name=None)
            t = time.perf_counter()
            worker.submit(table.append_column("user_id", table.column("profile_id")))
            queued.append(time.perf_counter() - t)
            next_at += interval
        worker.stop()
        flips = engine.run_due()
        elapsed = args.seconds
        print(f"real time: {sent:,} events in {elapsed:.0f} s ({sent / elapsed:,.0f}/s), "
              f"{len(delivered):,} signals, {len(flips):,} boundary flips at the end")
        p50, p99 = pct(latencies, 0.50) * 1000, pct(latencies, 0.99) * 1000
        peer = min(full) * 1000
        print(f"update latency, commit to signals: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms, mean {statistics.mean(latencies) * 1000:.1f} ms")
        print(f"peer, full recomputation of all segments: {peer:.0f} ms "
              f"(plus the polling period: 120 s in Dittofeed)")
        print(f"ratio: a full recomputation takes {peer / p99:.1f}x the real-time p99")
        w50, w99 = pct(worker.latencies, 0.50) * 1000, pct(worker.latencies, 0.99) * 1000
        print(f"alternative, through the real-time worker (merging batches): p50 {w50:.1f} ms, "
              f"p99 {w99:.1f} ms; the ingest thread waited at most "
              f"{max(queued) * 1000:.2f} ms per batch")
        print(f"  {len(worker.drains)} evaluations, mean {statistics.mean(d for d, _ in worker.drains) * 1000:.1f} ms, "
              f"{statistics.mean(n for _, n in worker.drains):.1f} batches each")
        engine.close()
        state.close()
        events.close()
        return 0 if p99 < 200 else 1


if __name__ == "__main__":
    sys.exit(main())
