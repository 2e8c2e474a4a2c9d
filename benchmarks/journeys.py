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
4. :func:`event_to_sink_latency` is ready for the end-to-end figure (1,000 events/s
   through the collector to the sink); it needs a running server, wired by the lead.
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


def _sink_main(port_q: Any, stop: Any, result_q: Any, times: bool = False) -> None:
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
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
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
                event="cancel_order", distinct_id=f"u{(sent + k) % 5000}",
                identities={"login_id": f"u{(sent + k) % 5000}"},
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
    return {"rate": rate, "events": sent, "received": len(lat),
            "exactly_once": all(v == 1 for v in counts.values()),
            "p50_ms": round(lat[len(lat) // 2], 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)}


def event_to_sink_latency(send_event: Callable[[int, dict[str, Any]], None],
                          arrivals: Callable[[], dict[str, float]], *, rate: int = 1000,
                          seconds: float = 30.0) -> dict[str, float]:
    """End-to-end latency at ``rate`` events/s, for a running server.

    ``send_event(i, properties)`` posts one event (with ``properties["sent_at"]``, a
    ``time.time()`` stamp, and ``properties["order_id"] = f"o{i}"``) to the collector;
    ``arrivals()`` returns {order id: time.time() at the sink} for messages received.
    A journey entered by that event with an immediate message must be applied.
    """
    sent: dict[str, float] = {}
    start = time.time()
    for i in range(int(rate * seconds)):
        target = start + i / rate
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        sent[f"o{i}"] = now
        send_event(i, {"sent_at": now, "order_id": f"o{i}"})
    time.sleep(max(3.0, seconds))  # let a backlog drain: late messages count as late
    got = arrivals()
    lat = sorted((got[k] - t) * 1000 for k, t in sent.items() if k in got)
    if not lat:
        return {"received": 0.0}
    return {"sent": float(len(sent)), "received": float(len(lat)),
            "p50_ms": lat[len(lat) // 2],
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def latency_through_server(rate: int, seconds: float) -> dict[str, Any]:
    """:func:`event_to_sink_latency` against a real ``touchline serve`` on loopback.

    Events go to the native collector (``POST /api/v1/events``, 10 per request every
    10 ms at 1,000/s); the server's own workers run the journey and deliver.
    """
    import os
    import socket
    import subprocess
    import sys

    import httpx

    ctx = mp.get_context("spawn")
    port_q, result_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    sink = ctx.Process(target=_sink_main, args=(port_q, stop, result_q, True), daemon=True)
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
    env = {**os.environ, "TOUCHLINE_ADMIN_TOKEN": token, "TOUCHLINE_LOG_FSYNC": "0",
           "TOUCHLINE_INGEST_INTERVAL_MS": "10"}
    server = subprocess.Popen(
        [sys.executable, "-c", "from touchline.cli import main; main()", "serve",
         "--data", str(data), "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/api/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("touchline serve did not start")
                time.sleep(0.2)
            client.post("/api/v1/journeys",
                        json={"source": LATENCY_SERVER}).raise_for_status()
            key = next(p["write_key"] for p in client.get("/api/v1/projects").json()
                       if p["name"] == "default")
            pending: list[dict[str, Any]] = []

            def send_event(i: int, props: dict[str, Any]) -> None:
                pending.append({"type": "track", "event": "cancel_order",
                                "event_id": f"e{i}",
                                "identities": {"login_id": f"u{i % 5000}"},
                                "properties": {**props, "sent_at": repr(props["sent_at"])}})
                if len(pending) >= max(1, rate // 100):
                    client.post(f"/api/v1/events?project=default&write_key={key}",
                                json=pending).raise_for_status()
                    pending.clear()

            duplicates = 0

            def arrivals() -> dict[str, float]:
                nonlocal duplicates
                stop.set()
                counts, arrived = result_q.get(timeout=60)
                duplicates = sum(counts.values()) - len(counts)
                return {json.loads(body)["body"]: at for at, body in arrived.values()}

            got = event_to_sink_latency(send_event, arrivals, rate=rate, seconds=seconds)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        stop.set()
        sink.join(timeout=10)
    return {"rate": rate, **got, "duplicates_at_sink": duplicates}


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
        print(json.dumps({"latency_through_server": "sqlite",
                          **latency_through_server(args.rate, args.seconds)}), flush=True)


if __name__ == "__main__":
    main()
