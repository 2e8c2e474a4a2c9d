"""Sensors requests logged undecoded: validated by the pipeline, refusals reported there."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from touchline.config import load_settings
from touchline.runtime import open_runtime
from touchline.track.decode import CollectRequest
from touchline.track.raw import RawBatch
from touchline.track.sensors import decode_sensors, sensors_raw_batch


def run_async(coro: Any) -> Any:
    """Run a coroutine to the end on a fresh loop in its own thread (a test before
    this one, Playwright's, may leave a loop running on the main thread)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def request(records: list[dict[str, Any]], project: str = "default") -> CollectRequest:
    body = base64.b64encode(gzip.compress(json.dumps(records).encode())).decode()
    return CollectRequest(method="POST", path="/sa", query={"project": project}, headers={},
                          body=f"data_list={body}&gzip=1".encode())


def test_raw_and_decoded_entries_apply_side_by_side(tmp_path: Path) -> None:
    now = int(time.time() * 1000)

    def rec(event: str, **over: Any) -> dict[str, Any]:
        return {"type": "track", "event": event, "time": now, "distinct_id": "m1",
                "properties": {"$is_login_id": True}, **over}

    raw = [rec("view_menu"), rec("pay", properties={"date": "x"}), rec("dine"),
           rec("order", distinct_id="undefined")]
    rt = open_runtime(load_settings(tmp_path, env={}))
    try:
        run_async(rt.sink.submit_raw(sensors_raw_batch(request(raw), now)))
        rt.sink.submit_sync(decode_sensors(request([rec("feedback")]), rt.projects, now).records)
        run_async(rt.sink.submit_raw(sensors_raw_batch(request([rec("x")], "ghost"), now)))
        # Acknowledged like any Sensors request; found broken when applied.
        run_async(rt.sink.submit_raw(RawBatch("sensors", "default", now, b"\x1f\x8bnot gzip")))
        rt.pipeline.drain()
        stats = rt.pipeline.stats
        assert stats.rejected == 4
        assert [(i.get("index"), i["field"]) for i in stats.recent_issues] == [
            (1, "properties.date"), (3, "distinct_id"), (0, "project"), (None, "data")]
        assert "gzip" in stats.recent_issues[-1]["rule"]
        result = rt.events.query("default", "SELECT event FROM events ORDER BY event",
                                 timeout_s=10, max_rows=10)
        assert [r[0] for r in result.rows] == ["dine", "feedback", "view_menu"]
    finally:
        rt.close()
    # Reopened: nothing is applied or reported twice.
    rt = open_runtime(load_settings(tmp_path, env={}))
    try:
        rt.pipeline.drain()
        assert rt.pipeline.stats.rejected == 0
        result = rt.events.query("default", "SELECT count(*) FROM events", timeout_s=10,
                                 max_rows=10)
        assert result.rows[0][0] == 3
    finally:
        rt.close()


def test_a_log_too_far_ahead_of_the_pipeline_answers_503(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from touchline.server.app import create_app

    now = int(time.time() * 1000)
    first, second = ([{"type": "track", "event": "view_menu", "time": now,
                       "distinct_id": f"a{i}", "properties": {"i": i}} for i in range(start, start + 40)]
                     for start in (0, 40))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    # Less than one request's log entry (40 gzipped records, some hundred bytes).
    rt = open_runtime(load_settings(tmp_path, env={}, ingest_max_lag_bytes=100))
    try:
        with TestClient(create_app(rt, start_workers=False)) as client:
            def send(records: list[dict[str, Any]]) -> Any:
                return client.post("/sa?project=default", content=request(records).body,
                                   headers=form)

            assert send(first).status_code == 200
            # The pipeline is stopped: the log is now past the limit.
            refused = send(second)
            assert refused.status_code == 503 and "behind" in refused.json()["message"]
            rt.pipeline.drain()
            assert send(second).status_code == 200  # what the SDK does: send again later
            rt.pipeline.drain()
        assert rt.events.query("default", "SELECT count(*) FROM events", timeout_s=10,
                               max_rows=1).rows[0][0] == 80
    finally:
        rt.close()
