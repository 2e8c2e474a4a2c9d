"""Ingest benchmark: Sensors BatchConsumer traffic against a real `touchline serve`.

Prints, from one run:
- acknowledged events/s (each 2xx means fsynced to the ingest log) and request
  latency p50/p99, from a keep-alive load generator on loopback;
- the rate at which the pipeline applied them to the stores (stitching + DuckDB);
- the raw append rate of the event store for the same events (its storage limit),
  and the ratio of the two;
- the server's peak resident memory;
- optionally (--profiles N) profile lookup latency with N profiles.

    .venv/bin/python benchmarks/ingest.py --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import httpx

TOKEN = "bench-token"
EVENTS = ["view_menu", "add_to_cart", "submit_order", "pay", "app_launch", "dine", "submit_feedback"]


def make_requests(n_requests: int, per_request: int, port: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    out = []
    seq = seed * 1_000_000_000
    for _ in range(n_requests):
        batch = []
        for _ in range(per_request):
            uid = rng.randrange(200_000)
            login = rng.random() < 0.6
            batch.append({
                "type": "track", "event": rng.choice(EVENTS), "time": now - rng.randrange(86_400_000),
                "distinct_id": f"member-{uid}" if login else f"anon-{uid}",
                "properties": {
                    "$lib": "python", "$lib_version": "1.11.0", "$is_login_id": login,
                    "channel": rng.choice(["app", "mini_program", "kiosk"]),
                    "amount": round(rng.random() * 200, 2), "seq": seq,
                },
                "lib": {"$lib": "python", "$lib_version": "1.11.0", "$lib_method": "code"},
            })
            seq += 1
        data = base64.b64encode(gzip.compress(json.dumps(batch).encode())).decode()
        body = urllib.parse.urlencode({"data_list": data, "gzip": "1"}).encode()
        head = (
            f"POST /sa?project=default HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def load(port: int, requests: list[bytes], connections: int, seconds: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    ok = 0
    failed = 0
    it = iter(requests)
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal ok, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for req in it:
            if time.perf_counter() > stop_at:
                break
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if head[9:12] == b"200":
                ok += 1
            else:
                failed += 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return ok, latencies, failed


def start_server(data: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "TOUCHLINE_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "touchline", "serve", "--data", str(data), "--port", "0"],
        env=env, stdout=open(data.parent / "server.log", "wb"), stderr=subprocess.STDOUT,
    )
    for _ in range(600):
        try:
            info = json.loads((data / "server.json").read_text())
            if info["pid"] == proc.pid:
                return proc, int(info["port"])
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start: " + (data.parent / "server.log").read_text()[-2000:])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_append_rate(requests: list[bytes], n_events: int) -> float:
    """Append the same events straight to the event store, in 20,000-event batches."""
    import pyarrow as pa

    from touchline.store.batch import EVENT_SCHEMA, IngestBatch
    from touchline.store.events import open_event_store

    rows: dict[str, list[object]] = {n: [] for n in EVENT_SCHEMA.names}
    for req in requests:
        body = req.split(b"\r\n\r\n", 1)[1]
        data = urllib.parse.parse_qs(body.decode())["data_list"][0]
        for rec in json.loads(gzip.decompress(base64.b64decode(data))):
            rows["project"].append("default")
            rows["event_id"].append(f"{rec['properties']['seq']}")
            rows["event"].append(rec["event"])
            rows["profile_id"].append(hash(rec["distinct_id"]) & 0xFFFFFF)
            rows["distinct_id"].append(rec["distinct_id"])
            rows["time"].append(rec["time"])
            rows["received_at"].append(rec["time"])
            rows["source"].append("sensors")
            rows["properties"].append(json.dumps(rec["properties"]))
        if len(rows["event"]) >= n_events:
            break
    table = pa.Table.from_pydict(rows, schema=EVENT_SCHEMA)
    with tempfile.TemporaryDirectory() as d:
        store = open_event_store(Path(d))
        t0 = time.perf_counter()
        offset = 0
        for start in range(0, table.num_rows, 20_000):
            offset += 1
            store.commit_batch(IngestBatch(events=table.slice(start, 20_000), offset=offset))
        elapsed = time.perf_counter() - t0
        store.close()
    return table.num_rows / elapsed


def profile_lookups(n_profiles: int, lookups: int = 5000) -> tuple[float, float]:
    from touchline.store.state import open_state_store
    from touchline.track.stitch import ensure_profiles, lookup_profile

    with tempfile.TemporaryDirectory() as d:
        state = open_state_store("", Path(d))
        step = 100_000
        for start in range(0, n_profiles, step):
            values = [f"member-{i}" for i in range(start, min(n_profiles, start + step))]
            with state.transaction() as tx:
                ensure_profiles(tx, "default", "login_id", values, seen_ms=[0] * len(values))
        rng = random.Random(7)
        lat = []
        for _ in range(lookups):
            ident = f"member-{rng.randrange(n_profiles)}"
            t0 = time.perf_counter()
            with state.transaction() as tx:
                view = lookup_profile(tx, "default", ident)
            lat.append(time.perf_counter() - t0)
            assert view is not None
        state.close()
    lat.sort()
    return lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--per-request", type=int, default=50)
    ap.add_argument("--profiles", type=int, default=0, help="also time profile lookups with N profiles")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        proc, port = start_server(data)
        try:
            n_req = int(args.seconds * 4000)  # more than the server can take in that time
            t0 = time.perf_counter()
            requests = make_requests(n_req, args.per_request, port, seed=1)
            print(f"prepared {n_req} requests in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            ok, lat, failed = asyncio.run(load(port, requests, args.connections, args.seconds))
            elapsed = time.perf_counter() - t0
            acked = ok * args.per_request
            lat.sort()
            p50 = lat[len(lat) // 2] * 1000
            p99 = lat[int(len(lat) * 0.99)] * 1000
            with httpx.Client(base_url=f"http://127.0.0.1:{port}",
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
                while c.get("/api/v1/ingest/status").json()["lag_bytes"]:
                    time.sleep(0.05)
                applied_elapsed = time.perf_counter() - t0
                count = c.post("/api/v1/query", json={"sql": "SELECT count(*) FROM events"}).json()["rows"][0][0]
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)

    rate = acked / elapsed
    applied_rate = count / applied_elapsed
    raw = raw_append_rate(requests, min(acked, 1_000_000) or 20_000)
    print(f"acknowledged (fsynced)  {rate:>12,.0f} events/s  ({acked:,} events, {ok:,} requests, {failed} non-2xx, {elapsed:.1f} s)")
    print(f"request latency         p50 {p50:.1f} ms   p99 {p99:.1f} ms   ({args.connections} connections)")
    print(f"applied to the stores   {applied_rate:>12,.0f} events/s  ({count:,} events stored)")
    print(f"raw event-store append  {raw:>12,.0f} events/s")
    print(f"ratio acknowledged/raw  {rate / raw:.2f}    applied/raw {applied_rate / raw:.2f}")
    print(f"server peak RSS         {rss:,.0f} MB")
    print("peer (documented, not measured here): RudderStack 1,700-3,000 events/s on 2-8 cores")
    if args.profiles:
        p50l, p99l = profile_lookups(args.profiles)
        print(f"profile lookup          p50 {p50l:.2f} ms   p99 {p99l:.2f} ms   ({args.profiles:,} profiles, SQLite)")


if __name__ == "__main__":
    main()
