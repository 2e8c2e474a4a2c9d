"""Peak memory while ingesting many events through the real pipeline (no HTTP).

Sensors BatchConsumer bodies are decoded by the collector's decoder, appended to the
ingest log, and applied by the ingest pipeline (stitching, state store, event store),
in one process, in rounds so that the input never sits in memory whole. Prints the
rate, the resident memory after each round (current, anonymous, file-backed, peak),
the resident memory at 1M/5M/10M events so growth is visible, and the peak against
the 1.5 GB target. ``--diag`` adds where the memory is (DuckDB's own accounting,
Arrow's allocator, the duplicate filter, the identity cache, the pipeline's lag).

    .venv/bin/python benchmarks/ingest_memory.py --events 10000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import pyarrow as pa
from ingest import make_requests

from touchline.config import load_settings
from touchline.runtime import Runtime, open_runtime
from touchline.track.decode import CollectRequest
from touchline.track.identity import CACHE_KEY
from touchline.track.sensors import decode_sensors

TARGET_MB = 1500
MILESTONES = (1_000_000, 5_000_000, 10_000_000)


def memory_mb() -> dict[str, float]:
    """This process's resident memory from /proc: current, anonymous, file, peak."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in fields:
            out[fields[key]] = int(line.split()[1]) / 1024
    return out


def diagnostics(rt: Runtime) -> str:
    """Where the memory sits, by the components' own accounting (private attributes:
    this is a measuring tool, not an API)."""
    parts: list[str] = []
    con: Any = getattr(rt.events, "_con", None)
    if con is not None:
        cur = con.cursor()
        try:
            rows = cur.execute(
                "SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0"
            ).fetchall()
        finally:
            cur.close()
        total = sum(r[1] for r in rows) / 2**20
        top = ", ".join(f"{t.lower()} {b / 2**20:.0f}" for t, b in sorted(rows, key=lambda r: -r[1])[:3])
        parts.append(f"duckdb {total:.0f} MB ({top})")
    parts.append(f"arrow {pa.total_allocated_bytes() / 2**20:.0f} MB")
    parts.append(f"python blocks {sys.getallocatedblocks():,}")
    pipeline: Any = rt.pipeline
    parts.append(f"dedupe {len(pipeline._dedupe):,} ids")
    cache = rt.state.caches.get(CACHE_KEY)
    if cache is not None:
        parts.append(f"identity cache {len(cache):,}")
    parts.append(f"lag {(rt.log.end_offset - pipeline.offset) / 2**20:.0f} MB of log")
    return "; ".join(parts)


def print_python_heap(top: int = 15) -> None:
    snapshot = tracemalloc.take_snapshot()
    stats = snapshot.statistics("traceback")
    print(f"Python heap {sum(s.size for s in stats) / 2**20:,.0f} MB; largest sites:")
    for stat in stats[:top]:
        # Innermost frame first: the line that allocated, then its callers.
        frames = " <- ".join(
            f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stat.traceback)
        )
        print(f"  {stat.size / 2**20:7.1f} MB {stat.count:>10,} blocks  {frames}")


def run_analyses(rt: Runtime) -> None:
    """Time a few analyses over everything stored, through the real engine and the
    event store (under its memory limit), and print the resident memory after."""
    from touchline.analyze.service import analyzer_for, forget

    day = 86_400_000
    now = time.time() * 1000
    span = {"from": time.strftime("%Y-%m-%d", time.gmtime((now - 2 * day) / 1000)),
            "to": time.strftime("%Y-%m-%d", time.gmtime((now + day) / 1000)),
            "time_zone": "UTC"}
    specs = {
        "events": {"events": [{"event": "pay", "measure": "users"}], "interval": "day"},
        "funnel": {"steps": ["view_menu", "add_to_cart", "pay"]},
        "retention": {"start": "view_menu", "return": "pay", "periods": 1},
    }
    analyzer = analyzer_for(rt)
    try:
        for kind, body in specs.items():
            t0 = time.perf_counter()
            analyzer.run(kind, {**span, **body})
            mem = memory_mb()
            print(f"analysis {kind:<10} {time.perf_counter() - t0:6.1f} s, "
                  f"RSS {mem['rss']:,.0f} MB, peak {mem['peak']:,.0f} MB", flush=True)
    finally:
        forget(rt)


def submit_round(rt: Runtime, seed: int, events: int, now: int) -> None:
    for raw in make_requests(events // 50, 50, 1, seed=seed):
        body = raw.split(b"\r\n\r\n", 1)[1]
        req = CollectRequest(method="POST", path="/sa", query={"project": "default"},
                             headers={"content-type": "application/x-www-form-urlencoded"},
                             body=body)
        rt.sink.submit_sync(decode_sensors(req, rt.projects, now).records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--round", type=int, default=200_000, help="events submitted per round")
    ap.add_argument("--diag", action="store_true", help="print where the memory is each round")
    ap.add_argument("--analyze", action="store_true",
                    help="after ingesting, time a few analyses over the stored events")
    ap.add_argument("--trace", action="store_true",
                    help="trace Python allocations (slow) and print the largest sites at the end")
    args = ap.parse_args()
    if args.trace:
        tracemalloc.start(4)
    at_milestone: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as d:
        settings = load_settings(Path(d))
        rt = open_runtime(settings)
        rt.pipeline.start()
        now = int(time.time() * 1000)
        started = time.perf_counter()
        done = 0
        seed = 1
        while done < args.events:
            submit_round(rt, seed, min(args.round, args.events - done), now)
            done += min(args.round, args.events - done)
            seed += 1
            mem = memory_mb()
            for m in MILESTONES:
                if done >= m and m not in at_milestone:
                    at_milestone[m] = mem["rss"]
            line = (f"{done:>12,} events submitted, {time.perf_counter() - started:6.0f} s, "
                    f"RSS {mem['rss']:,.0f} MB (anon {mem['anon']:,.0f}, file {mem['file']:,.0f}), "
                    f"peak {mem['peak']:,.0f} MB")
            if args.diag:
                line += "\n    " + diagnostics(rt)
            print(line, flush=True)
        rt.pipeline.stop()
        elapsed = time.perf_counter() - started
        count = rt.events.query("default", "SELECT count(*) FROM events", timeout_s=600,
                                max_rows=1).rows[0][0]
        if args.diag:
            print("after draining: " + diagnostics(rt))
        ingest_peak = memory_mb()["peak"]
        if args.analyze:
            run_analyses(rt)
        if args.trace:
            print_python_heap()
        rt.close()
    peak = ingest_peak
    print(f"ingested {count:,} events in {elapsed:.0f} s ({count / elapsed:,.0f} events/s, "
          f"decode + log + pipeline in one process)")
    for m, rss in sorted(at_milestone.items()):
        print(f"RSS after {m:>12,} events submitted: {rss:,.0f} MB")
    verdict = "within" if peak <= TARGET_MB else "OVER"
    print(f"peak resident memory while ingesting {peak:,.0f} MB: {verdict} the "
          f"{TARGET_MB:,} MB target ({count:,} events)")


if __name__ == "__main__":
    main()
