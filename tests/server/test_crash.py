"""Durable before acknowledged: kill -9 the server under load, restart, count."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from serverproc import Server, start_server, stop_server

pytestmark = pytest.mark.slow


def sensors_batch(start: int, n: int, now_ms: int) -> dict[str, str]:
    records = [
        {
            "type": "track", "event": "crash_probe", "time": now_ms, "distinct_id": f"user-{i % 97}",
            "properties": {"seq": i, "$lib": "python", "$lib_version": "1.11.0"},
            "lib": {"$lib": "python", "$lib_version": "1.11.0", "$lib_method": "code"},
        }
        for i in range(start, start + n)
    ]
    data = base64.b64encode(gzip.compress(json.dumps(records).encode())).decode()
    return {"data_list": data, "gzip": "1"}


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    acked: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        seq = worker * 10_000_000
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while not stop.is_set():
                body = sensors_batch(seq, 50, int(time.time() * 1000))
                try:
                    r = c.post("/sa?project=default", data=body)
                except httpx.HTTPError:
                    return  # the server died mid-request: not acknowledged
                if r.status_code == 200:
                    with lock:
                        acked.extend(range(seq, seq + 50))
                seq += 50

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 1000, "the load generator got too few acknowledgements to mean anything"

    restarted = start_server(data)
    try:
        restarted.wait_ingested()
        rows = restarted.query(
            "SELECT CAST(properties->>'seq' AS BIGINT) AS seq, count(*) AS n "
            "FROM events WHERE event = 'crash_probe' GROUP BY 1"
        )
        stored = {int(seq): int(n) for seq, n in rows}  # type: ignore[call-overload]
        missing = set(acked) - set(stored)
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
        doubled = {s: n for s, n in stored.items() if n != 1}
        assert not doubled, f"events stored more than once: {list(doubled.items())[:5]}"
    finally:
        stop_server(restarted)


def test_sigterm_flushes_and_exits_cleanly(server: Server) -> None:
    with httpx.Client(base_url=server.url) as c:
        for i in range(20):
            r = c.post("/sa?project=default", data=sensors_batch(i * 50, 50, int(time.time() * 1000)))
            assert r.status_code == 200
    assert stop_server(server) == 0
    restarted = start_server(server.data)
    try:
        rows = restarted.query("SELECT count(*) FROM events WHERE event = 'crash_probe'")
        assert rows == [[1000]]
    finally:
        stop_server(restarted)
