"""Bad records in a batch: reported with field and rule, the good ones kept."""

from __future__ import annotations

import base64
import json
import time

from serverproc import Server


def test_bad_record_is_reported_and_good_ones_kept(server: Server) -> None:
    now = int(time.time() * 1000)
    records = [
        {"type": "track", "event": "view_menu", "time": now, "distinct_id": "u1", "properties": {}},
        {"type": "track", "event": "pay", "time": now, "distinct_id": "u1",
         "properties": {"date": "2026-11-01"}},  # a reserved property name
        {"type": "track", "event": "dine", "time": now, "distinct_id": "undefined",
         "properties": {}},  # a junk id
    ]
    data = base64.b64encode(json.dumps(records).encode()).decode()
    with server.client() as c:
        r = c.post("/sa?project=default", data={"data_list": data})
        assert r.status_code == 200 and r.content == b""  # what the SDKs expect
        bad = c.post("/sa?project=nowhere", data={"data_list": data})
        assert bad.status_code == 200  # never 403/404 for a project: Android resends forever
        server.wait_ingested()
        status = c.get("/api/v1/ingest/status").json()
    assert status["rejected"] >= 2 + 3
    fields = {i["field"] for i in status["recent_issues"]}
    assert "properties.date" in fields and "distinct_id" in fields
    assert server.query("SELECT event FROM events") == [["view_menu"]]


def test_admin_api_needs_the_token(server: Server) -> None:
    import httpx

    with httpx.Client(base_url=server.url) as c:
        r = c.post("/api/v1/query", json={"sql": "SELECT 1"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthError"
        r = c.get("/api/v1/profiles/u1", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert c.get("/docs").status_code == 200
        assert "/api/v1/query" in c.get("/openapi.json").json()["paths"]
    with server.client() as c:
        r = c.post("/api/v1/query", json={"sql": "SELECT * FROM read_csv('/etc/passwd')"})
        assert r.status_code == 400 and "read_csv" in r.text.lower()
        r = c.get("/api/v1/profiles/nobody")
        assert r.status_code == 404 and "nobody" in r.json()["error"]["message"]
