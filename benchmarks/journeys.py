"""Journey engine benchmark: node transitions/s, exactly-once delivery, timer lateness.

    python benchmarks/journeys.py                          # SQLite, 1,000,000 users
    python benchmarks/journeys.py --users 100000 --state-url postgresql://postgres@127.0.0.1:5432/test

1. Throughput: N users enter from a segment a journey of delay (1 min, virtual time),
   condition split on a profile trait, message (to the outbox), exit. Reports node
   transitions per second (an entry and every node a user reaches count one), with
   every state change, timeline row and outbox row committed to the state store.
   Profiles come from an in-memory source (the group trait), as a profile cache would.
2. Delivery: the messages of a smaller run go through the outbox and the real webhook
   channel to a loopback sink in another process, which counts every Idempotency-Key:
   each must arrive exactly once.
3. Timers: with P timers pending (seeded directly into the due index), a journey of
   short delays runs under a real clock; reports how late timers fire (p50/p99/max).
4. Latency in process (``--only latency``): events appended to the ingest log of a
   runtime in this process, to the message at the sink (fsync off, no HTTP hop).
5. Latency through the server (``--only server``): 1,000 events/s (``--rate``) POSTed
   to the collector of a real ``touchline serve`` with the ingest log fsynced before
   each acknowledgement (the default; ``--no-fsync`` to compare), each event entering
   a journey whose message goes to the loopback sink. Reports p50/p99 from the event
   reaching the collector to its message reaching the sink.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from touchline.clock import SystemClock, VirtualClock
from touchline.orchestrate import storage
from touchline.orchestrate.channels import WebhookChannel
from touchline.orchestrate.engine import Engine
from touchline.orchestrate.outbox import DeliveryPolicy, Outbox
from touchline.orchestrate.validate import parse_journey
from touchline.orchestrate.worker import JourneyWorker
from touchline.store.state import StateStore, open_state_store

T0 = 1_700_000_000_000
GROUPS = ("family", "white_collar", "student")
SECRET = "bench"

JOURNEY = """
id: bench
entry: {type: segment, segment: everyone}
start: wait
nodes:
  wait: {type: delay, duration: 1m, next: split}
  split:
    type: condition
    branches: [{name: family, when: {profile.group: family}, next: msg}]
    default: bye
  msg: {type: message, channel: webhook, category: transactional, body: "hi", next: bye}
  bye: {type: exit}
"""

TIMERS = """
id: timers
entry: {type: segment, segment: soon}
start: wait
nodes:
  wait: {type: delay, duration: 5s, next: bye}
  bye: {type: exit}
"""


def profiles(tx: Any, project: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    return {i: {"group": GROUPS[i % 3]} for i in ids}


_SCHEMAS: list[tuple[str, str]] = []


_DIRS: list[str] = []


def data_dir() -> Path:
    """A scratch data directory, removed at exit."""
    path = tempfile.mkdtemp(prefix="tl-bench-")
    _DIRS.append(path)
    return Path(path)


def drop_schemas() -> None:
    """Remove the PostgreSQL schemas and the scratch directories this run created."""
    import shutil

    import psycopg

    for path in _DIRS:
        shutil.rmtree(path, ignore_errors=True)
    _DIRS.clear()
    for url, schema in _SCHEMAS:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    _SCHEMAS.clear()


def open_store(url: str, clock: Any) -> tuple[StateStore, str]:
    data = data_dir()
    if url:
        import uuid

        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        _SCHEMAS.append((url, schema))
        url = f"{url}?options=-csearch_path%3D{schema}"
    store = open_state_store(url, data, clock=clock)
    store.ensure_schema(storage.SCHEMA_NAME, storage.STATE_SCHEMA)
    return store, url


def apply(store: StateStore, source: str, now_ms: int) -> None:
    with store.transaction() as tx:
        storage.apply_journey(tx, parse_journey(source), now_ms)


def throughput(users: int, url: str) -> dict[str, Any]:
    clock = VirtualClock(T0)
    store, _ = open_store(url, clock)
    apply(store, JOURNEY, T0)
    engine = Engine(store, clock, profiles=profiles)
    start = time.perf_counter()
    entered = engine.enter_users("default", "bench", range(1, users + 1), "seg:1")
    entered_s = time.perf_counter() - start
    transitions = entered
    while n := engine.run_due(5000):
        transitions += n
    clock.advance(61)
    while n := engine.run_due(5000):
        transitions += n
    total_s = time.perf_counter() - start
    with store.transaction() as tx:
        outbox = int(tx.fetchone("SELECT COUNT(*) FROM journey_outbox")[0])
        done = int(tx.fetchone(
            "SELECT COUNT(*) FROM journey_states WHERE status = 'done'")[0])
    store.close()
    return {"users": users, "entered_per_s": round(entered / entered_s),
            "transitions": transitions, "seconds": round(total_s, 1),
            "transitions_per_s": round(transitions / total_s), "messages": outbox,
            "exited": done, "expected_messages": users // 3}


# -- a loopback webhook sink in its own process -------------------------------------


def _sink_main(port_q: Any, stop: Any, result_q: Any, times: bool = False,
               received: Any = None) -> None:
    counts: dict[str, int] = {}
    arrived: dict[str, tuple[float, bytes]] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                key = ""
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    lname = name.strip().lower()
                    if lname == b"content-length":
                        length = int(value.strip())
                    elif lname == b"idempotency-key":
                        key = value.strip().decode()
                body = await reader.readexactly(length)
                counts[key] = counts.get(key, 0) + 1
                if times and key not in arrived:
                    arrived[key] = (time.time(), body)
                    if received is not None:
                        received.value += 1  # only this process writes it
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_q.put(server.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()
        result_q.put((counts, arrived) if times else counts)

    asyncio.run(main())


def delivery(users: int, url: str) -> dict[str, Any]:
    """Run the journey for ``users`` and deliver every message to the sink."""
    ctx = mp.get_context("spawn")
    port_q, result_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    sink = ctx.Process(target=_sink_main, args=(port_q, stop, result_q), daemon=True)
    sink.start()
    port = port_q.get(timeout=30)
    clock = SystemClock()
    store, _ = open_store(url, clock)
    apply(store, JOURNEY.replace("duration: 1m", "duration: 1s"), clock.now_ms())
    engine = Engine(store, clock, profiles=profiles)
    engine.enter_users("default", "bench", range(1, users + 1), "seg:1")
    while (due := engine.next_due_ms()) is not None:
        time.sleep(max(0.0, (due - clock.now_ms()) / 1000))
        engine.run_due(5000)
    channel = WebhookChannel({"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET},
                             clock=clock)
    outbox = Outbox(store, clock, {"webhook": channel}, profiles=profiles,
                    policy=DeliveryPolicy(caps=(), quiet_start="00:00", quiet_end="00:00"))

    async def drain() -> None:
        while await outbox.run_once(1000):
            pass
        await channel.aclose()

    start = time.perf_counter()
    asyncio.run(drain())
    seconds = time.perf_counter() - start
    stop.set()
    counts: dict[str, int] = result_q.get(timeout=30)
    sink.join(timeout=10)
    with store.transaction() as tx:
        ids = {r[0] for r in tx.fetchall("SELECT message_id FROM journey_outbox")}
        sent = int(tx.fetchone(
            "SELECT COUNT(*) FROM journey_outbox WHERE status = 'sent'")[0])
    store.close()
    return {"messages": len(ids), "sent": sent, "seconds": round(seconds, 1),
            "messages_per_s": round(len(ids) / seconds) if seconds else None,
            "exactly_once": set(counts) == ids and all(v == 1 for v in counts.values()),
            "duplicates_at_sink": sum(counts.values()) - len(counts)}


def timers(pending: int, url: str, short: int = 2000) -> dict[str, Any]:
    """Lateness of short timers while ``pending`` other timers wait in the index."""
    clock = SystemClock()
    store, _ = open_store(url, clock)
    now = clock.now_ms()
    apply(store, JOURNEY, now)
    apply(store, TIMERS, now)
    # Seed the pending timers straight into the due index (an hour or more ahead).
    rows = [("default", "bench", u, "seg:1", 1, "wait", "active", now + 3_600_000 + u,
             None, "{}", now, now, None) for u in range(1, pending + 1)]
    for i in range(0, len(rows), 50_000):
        with store.transaction() as tx:
            tx.executemany(
                "INSERT INTO journey_states (project, journey_id, user_id, entry_key, "
                "version, node, status, due_ms, wait_event, data, entered_ms, updated_ms, "
                "exit_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows[i:i + 50_000])
    del rows
    engine = Engine(store, clock)
    worker = JourneyWorker(engine, signals=False)
    worker.start()
    try:
        # Users enter in small groups over a few seconds, so timers fall due all along.
        for k in range(10):
            part = range(10_000_000 + k * short // 10, 10_000_000 + (k + 1) * short // 10)
            engine.enter_users("default", "timers", part, "seg:1")
            time.sleep(0.3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with store.transaction() as tx:
                done = int(tx.fetchone("SELECT COUNT(*) FROM journey_states WHERE "
                                       "journey_id = 'timers' AND status = 'done'")[0])
            if done >= short:
                break
            time.sleep(0.2)
    finally:
        worker.stop()
    with store.transaction() as tx:
        waits = {(r[0]): json.loads(r[1])["until"] for r in tx.fetchall(
            "SELECT user_id, detail FROM journey_log WHERE journey_id = 'timers' "
            "AND kind = 'wait'")}
        fired = {r[0]: int(r[1]) for r in tx.fetchall(
            "SELECT user_id, at_ms FROM journey_log WHERE journey_id = 'timers' "
            "AND kind = 'exit'")}
    store.close()
    late = sorted(fired[u] - waits[u] for u in fired if u in waits)
    if not late:
        return {"pending": pending, "fired": 0}
    return {"pending": pending, "fired": len(late),
            "late_ms_p50": statistics.median(late),
            "late_ms_p99": late[min(len(late) - 1, int(len(late) * 0.99))],
            "late_ms_max": late[-1],
            "within_1s": sum(x <= 1000 for x in late) / len(late)}


LATENCY = """
id: latency
entry: {type: event, event: cancel_order, correlation_key: order_id}
start: coupon
nodes:
  coupon: {type: message, channel: webhook, category: transactional, quiet_hours: ignore,
           body: "{{ event.sent_at }}"}
"""
LATENCY_SERVER = LATENCY.replace("{{ event.sent_at }}", "{{ event.order_id }}")


def latency_in_process(rate: int, seconds: float) -> dict[str, Any]:
    """Event appended to the ingest log -> message at the sink, inside one runtime.

    The collector's HTTP hop is not included (see :func:`event_to_sink_latency`).
    """
    from touchline.config import load_settings
    from touchline.runtime import open_runtime
    from touchline.track.records import Record

    ctx = mp.get_context("spawn")
    port_q, result_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    sink = ctx.Process(target=_sink_main, args=(port_q, stop, result_q, True), daemon=True)
    sink.start()
    port = port_q.get(timeout=30)
    data = data_dir()
    (data / "channels.yaml").write_text(
        f"webhook: {{type: webhook, url: 'http://127.0.0.1:{port}/hook', secret: {SECRET}}}\n")
    rt = open_runtime(load_settings(data, env={}, admin_token="bench", log_fsync=False,
                                    ingest_interval_ms=10))
    apply(rt.state, LATENCY, rt.clock.now_ms())
    rt.start_workers()
    sent = 0
    try:
        start = time.time()
        total = int(rate * seconds)
        batch = max(1, rate // 100)  # a request every 10 ms
        while sent < total:
            target = start + sent / rate
            if (pause := target - time.time()) > 0:
                time.sleep(pause)
            now = time.time()
            rt.sink.submit_sync([Record(
                kind="track", project="default", event_id=f"e{sent + k}",
                time_ms=int(now * 1000), received_ms=int(now * 1000), source="bench",
                event="cancel_order", distinct_id=f"u{sent + k}",
                identities={"login_id": f"u{sent + k}"},
                properties={"order_id": f"o{sent + k}", "sent_at": repr(now)})
                for k in range(batch)])
            sent += batch
        time.sleep(5)
    finally:
        rt.close()
        stop.set()
    counts, arrived = result_q.get(timeout=60)
    sink.join(timeout=10)
    lat = sorted((at - float(json.loads(body)["body"])) * 1000
                 for at, body in arrived.values())
    if not lat:
        return {"rate": rate, "received": 0}
    return {"fsync": False, "rate": rate, "events": sent, "received": len(lat),
            "exactly_once": all(v == 1 for v in counts.values()),
            "p50_ms": round(lat[len(lat) // 2], 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)}


def _percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of sorted ``values``."""
    return values[min(len(values) - 1, int(len(values) * q))]


def _wait_server(client: Any, deadline_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if client.get("/api/v1/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("touchline serve did not start")
        time.sleep(0.2)


async def _post_paced(base: str, path: str, rate: int, seconds: float,
                      make: Callable[[int, float], dict[str, Any]]
                      ) -> tuple[dict[str, float], list[float], int]:
    """POST ``rate`` events/s for ``seconds``: one request every 10 ms, not waiting for
    the previous answer (an fsync wait must not slow the offered load down).

    Returns ({order id: time.time() when its request left}, ack latencies in ms,
    failed requests). Each event is stamped with the moment its request is sent, so
    the latency counts from the event reaching the collector, not from a client queue.
    """
    import httpx

    per_request = max(1, rate // 100)
    sent: dict[str, float] = {}
    acks: list[float] = []
    failed = 0

    async def post(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
        nonlocal failed
        t0 = time.perf_counter()
        try:
            r = await client.post(path, json=events)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        acks.append((time.perf_counter() - t0) * 1000)
        failed += not ok

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        tasks: set[asyncio.Task[None]] = set()
        start = time.time()
        i = 0
        total = int(rate * seconds)
        while i < total:
            target = start + i / rate
            if (pause := target - time.time()) > 0:
                await asyncio.sleep(pause)
            now = time.time()
            batch = [make(i + k, now) for k in range(min(per_request, total - i))]
            for k in range(len(batch)):
                sent[f"o{i + k}"] = now
            i += len(batch)
            task = asyncio.create_task(post(client, batch))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    return sent, acks, failed


def _stages(state_db: Path, sent: dict[str, float], got: dict[str, float]
            ) -> dict[str, Any]:
    """Where the time went, per message, from the rows the server left behind: the
    engine's step (the outbox row's ``created_ms``), the delivery claim (its
    ``sending`` log line) and the arrival at the sink."""
    import sqlite3

    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT o.payload, o.created_ms, MIN(d.at_ms) FROM journey_outbox o "
            "JOIN journey_delivery d ON d.message_id = o.message_id "
            "AND d.status = 'sending' GROUP BY o.message_id").fetchall()
    finally:
        conn.close()
    hops: dict[str, list[float]] = {"to_engine_ms": [], "engine_to_claim_ms": [],
                                    "claim_to_sink_ms": []}
    for payload, created_ms, claimed_ms in rows:
        order = json.loads(payload)["context"]["event"]["order_id"]
        if order not in sent or order not in got:
            continue
        hops["to_engine_ms"].append(created_ms - sent[order] * 1000)
        hops["engine_to_claim_ms"].append(claimed_ms - created_ms)
        hops["claim_to_sink_ms"].append(got[order] * 1000 - claimed_ms)
    out: dict[str, Any] = {}
    for name, values in hops.items():
        if values:
            values.sort()
            out[name] = [round(_percentile(values, 0.5), 1), round(_percentile(values, 0.99), 1)]
    return out


def latency_through_server(rate: int, seconds: float, *, fsync: bool = True,
                           server_log: str | None = None) -> dict[str, Any]:
    """Event reaching the collector -> its message at the loopback sink, through a real
    ``touchline serve`` (its own workers run the journey and deliver).

    Events go to the native collector (``POST /api/v1/events``, ``rate / 100`` per
    request every 10 ms), each from a different user, each entering the journey and
    producing one immediate webhook message. ``fsync`` on (the default) keeps the
    server's durable-before-acknowledged log as shipped. A message that has not
    reached the sink by the end of the drain period (as long as the run, at least
    10 s) is left out of the percentiles: ``received`` below ``sent`` says the
    server fell behind.
    """
    import os
    import socket
    import subprocess
    import sys

    import httpx

    ctx = mp.get_context("spawn")
    port_q, result_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    received = ctx.Value("l", 0)
    sink = ctx.Process(target=_sink_main, args=(port_q, stop, result_q, True, received),
                       daemon=True)
    sink.start()
    sink_port = port_q.get(timeout=30)
    data = data_dir()
    (data / "channels.yaml").write_text(
        f"webhook: {{type: webhook, url: 'http://127.0.0.1:{sink_port}/hook', "
        f"secret: {SECRET}}}\n")
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    token = "bench-token"
    env = {**os.environ, "TOUCHLINE_ADMIN_TOKEN": token,
           "TOUCHLINE_LOG_FSYNC": "1" if fsync else "0"}
    out = open(server_log, "ab") if server_log else subprocess.DEVNULL
    server = subprocess.Popen(
        [sys.executable, "-c", "from touchline.cli import main; main()", "serve",
         "--data", str(data), "--port", str(port)], env=env, stdout=out, stderr=out)
    print(f"# touchline serve pid {server.pid}", file=sys.stderr, flush=True)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    duplicates = 0
    arrived: dict[str, tuple[float, bytes]] = {}
    try:
        with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
            _wait_server(client)
            client.post("/api/v1/journeys",
                        json={"source": LATENCY_SERVER}).raise_for_status()
            key = next(p["write_key"] for p in client.get("/api/v1/projects").json()
                       if p["name"] == "default")

        def make(i: int, now: float) -> dict[str, Any]:
            return {"type": "track", "event": "cancel_order", "event_id": f"e{i}",
                    "identities": {"login_id": f"u{i}"},
                    "properties": {"order_id": f"o{i}", "sent_at": repr(now)}}

        began = time.time()
        sent, acks, failed = asyncio.run(_post_paced(
            base, f"/api/v1/events?project=default&write_key={key}", rate, seconds, make))
        offered_s = time.time() - began
        # Drain: wait for every message; what is still missing at the deadline is lost.
        deadline = time.monotonic() + max(10.0, seconds)
        while received.value < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        counts, arrived = result_q.get(timeout=60)
        duplicates = sum(counts.values()) - len(counts)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        stop.set()
        sink.join(timeout=10)
        if server_log:
            out.close()
    got = {json.loads(body)["body"]: at for at, body in arrived.values()}
    lat = sorted((got[k] - t) * 1000 for k, t in sent.items() if k in got)
    acks.sort()
    result: dict[str, Any] = {
        "fsync": fsync, "rate": rate, "offered_per_s": round(len(sent) / offered_s),
        "sent": len(sent), "failed_requests": failed, "received": len(lat),
        "duplicates_at_sink": duplicates}
    if acks:
        result.update(ack_p50_ms=round(_percentile(acks, 0.5), 1),
                      ack_p99_ms=round(_percentile(acks, 0.99), 1))
    if lat:
        result.update(p50_ms=round(_percentile(lat, 0.5), 1),
                      p99_ms=round(_percentile(lat, 0.99), 1), max_ms=round(lat[-1], 1))
        # [p50, p99] of each hop (the server's clock and this one are the same clock).
        result["stages"] = _stages(data / "state.db", sent, got)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--deliver", type=int, default=20_000,
                    help="Users of the delivery run (a third of them get a message).")
    ap.add_argument("--pending", type=int, default=1_000_000)
    ap.add_argument("--state-url", default="", help="'' for SQLite, or postgresql://...")
    ap.add_argument("--only", choices=["throughput", "delivery", "timers", "latency",
                                       "server"], default=None)
    ap.add_argument("--rate", type=int, default=1000, help="Events/s of the latency run.")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--no-fsync", action="store_true",
                    help="Server latency run without fsync of the ingest log (not the "
                         "shipped setting: a 2xx then is not durable on power loss).")
    ap.add_argument("--server-log", default=None,
                    help="Append the server's output to this file (server latency run).")
    args = ap.parse_args()
    backend = "postgres" if args.state_url else "sqlite"
    atexit.register(drop_schemas)
    if args.only in (None, "throughput"):
        print(json.dumps({"throughput": backend, **throughput(args.users, args.state_url)}),
              flush=True)
    if args.only in (None, "delivery"):
        print(json.dumps({"delivery": backend, **delivery(args.deliver, args.state_url)}),
              flush=True)
    if args.only in (None, "timers"):
        print(json.dumps({"timers": backend, **timers(args.pending, args.state_url)}),
              flush=True)
    if args.only in (None, "latency") and not args.state_url:
        print(json.dumps({"latency_in_process": "sqlite",
                          **latency_in_process(args.rate, args.seconds)}), flush=True)
    if args.only == "server":
        print(json.dumps({"latency_through_server": "sqlite", **latency_through_server(
            args.rate, args.seconds, fsync=not args.no_fsync, server_log=args.server_log)}),
            flush=True)


if __name__ == "__main__":
    main()
