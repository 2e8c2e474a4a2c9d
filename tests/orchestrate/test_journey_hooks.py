"""Journeys as a plugin: a real runtime, the REST routes, the on_stitched_events hook and the
workers delivering to a loopback webhook receiver configured in channels.yaml."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from servers import ProviderState, serve, webhook_app, webhook_runtime

from touchline.orchestrate.hooks import journeys_for, on_stitched_events, workers
from touchline.orchestrate.outbox import get_consent
from touchline.runtime import Runtime
from touchline.server.app import create_app

TOKEN = "journey-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

RESCUE = {
    "id": "rescue",
    "entry": {"type": "event", "event": "cancel_order", "correlation_key": "order_id"},
    "start": "coupon",
    "nodes": {
        "coupon": {"type": "message", "channel": "app", "category": "transactional",
                   "body": "coupon for {{ event.order_id }}", "quiet_hours": "ignore"},
    },
}


@pytest.fixture
def sink() -> Iterator[ProviderState]:
    state = ProviderState()
    with serve(webhook_app(state, "s3cret"), state):
        yield state


@pytest.fixture
def runtime(tmp_path: Path, sink: ProviderState) -> Iterator[Runtime]:
    with webhook_runtime(tmp_path, sink, ingest=False, admin_token=TOKEN) as rt:
        yield rt


def events_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({
        "project": [r.get("project", "default") for r in rows],
        "event_id": [r["event_id"] for r in rows],
        "event": [r["event"] for r in rows],
        "user_id": pa.array([r["user_id"] for r in rows], pa.int64()),
        "time": pa.array([r["time"] for r in rows], pa.timestamp("ms")),
        "properties": [orjson.dumps(r.get("properties", {})).decode() for r in rows],
    })


def test_rest_apply_event_hook_and_delivery(runtime: Runtime, sink: ProviderState) -> None:
    client = TestClient(create_app(runtime, start_workers=False))
    bad = client.post("/api/v1/journeys", headers=AUTH,
                      json={"definition": {**RESCUE, "start": "nope"}})
    assert bad.status_code == 400
    assert bad.json()["error"]["problems"] == [
        {"field": "start", "rule": "no node named 'nope'"}]
    checked = client.post("/api/v1/journeys/validate", headers=AUTH, json={"definition": RESCUE})
    assert checked.json() == {"ok": True, "id": "rescue", "nodes": 1}
    applied = client.post("/api/v1/journeys", headers=AUTH, json={"definition": RESCUE})
    assert applied.status_code == 201 and applied.json()["version"] == 1

    now = runtime.clock.now_ms()
    on_stitched_events(runtime, events_table([
        {"event_id": "e1", "event": "cancel_order", "user_id": 11, "time": now,
         "properties": {"order_id": "A1"}},
        {"event_id": "e2", "event": "view_menu", "user_id": 12, "time": now},
    ]))
    loops = workers(runtime)
    for loop in loops:
        loop.start()
    try:
        deadline = time.monotonic() + 20
        while not sink.seen_keys and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for loop in reversed(loops):
            loop.stop()
    assert len(sink.seen_keys) == 1
    assert b"coupon for A1" in sink.requests[0].body
    stats = client.get("/api/v1/journeys/rescue/stats", headers=AUTH).json()
    assert stats["entered"] == 1 and stats["messages"] == {"sent": 1}
    line = client.get("/api/v1/journeys/timeline/11", headers=AUTH).json()
    assert [x["kind"] for x in line] == ["enter", "message", "exit"]
    assert line[1]["detail"]["delivery"] == "sent"
    paused = client.post("/api/v1/journeys/rescue/pause", headers=AUTH)
    assert paused.json()["status"] == "paused"
    listed = client.get("/api/v1/journeys", headers=AUTH).json()
    assert [(j["id"], j["status"]) for j in listed] == [("rescue", "paused")]
    assert journeys_for(runtime).engine is journeys_for(runtime).engine

    # The one-click unsubscribe link in the message works without the admin token.
    link = orjson.loads(sink.requests[0].body)["unsubscribe_url"]
    path = link.split(str(runtime.settings.port), 1)[1]
    assert client.post(path).json() == {"unsubscribed": "all"}
    assert client.post(path[:-3] + "xyz").status_code == 400
    with runtime.state.transaction() as tx:
        assert get_consent(tx, "default", 11).unsubscribed_all
