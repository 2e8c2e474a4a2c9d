"""Exact duplicates stay duplicates across a restart, profile operations included.

The JS SDK resends a batch until it sees a 2xx; if the server restarted in between,
the resent profile_increment must not count twice (events are remembered through
the event store, other records through the state store's applied_records).
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from pathlib import Path
from typing import Any

import httpx

from serverproc import start_server, stop_server


def form(records: list[dict[str, Any]]) -> dict[str, str]:
    return {"data_list": base64.b64encode(gzip.compress(json.dumps(records).encode())).decode(),
            "gzip": "1"}


def test_a_resent_batch_after_restart_applies_once(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    batch = form([
        {"type": "profile_increment", "distinct_id": "M1", "time": now,
         "properties": {"$is_login_id": True, "points": 5}},
        {"type": "profile_append", "distinct_id": "M1", "time": now + 1,
         "properties": {"$is_login_id": True, "visits": ["S01"]}},
        {"type": "track", "event": "pay", "distinct_id": "M1", "time": now + 2,
         "properties": {"$is_login_id": True, "amount": 30}},
    ])
    data = tmp_path / "data"
    server = start_server(data)
    try:
        with httpx.Client(base_url=server.url) as c:
            assert c.post("/sa?project=default", data=batch).status_code == 200
            assert c.post("/sa?project=default", data=batch).status_code == 200
        server.wait_ingested()
    finally:
        assert stop_server(server) == 0

    restarted = start_server(data)
    try:
        with httpx.Client(base_url=restarted.url) as c:
            assert c.post("/sa?project=default", data=batch).status_code == 200
        restarted.wait_ingested()
        with restarted.client() as c:
            profile = c.get("/api/v1/profiles/M1").json()
            status = c.get("/api/v1/ingest/status").json()
        assert profile["properties"]["points"] == 5
        assert profile["properties"]["visits"] == ["S01"]
        assert profile["event_count"] == 1
        assert status["duplicates"] == 3  # the resend after the restart, all three records
    finally:
        stop_server(restarted)
