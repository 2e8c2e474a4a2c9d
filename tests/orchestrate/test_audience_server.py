"""Audiences end to end: a real ``touchline serve`` (collector, ingest, REST routes,
boundary worker) and the ``touchline segment`` CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverproc import Server


def _poll(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _members(c: httpx.Client, name: str) -> list[int]:
    r = c.get(f"/api/v1/segments/{name}/members")
    r.raise_for_status()
    return [m["user_id"] for m in r.json()["members"]]


@pytest.mark.slow
def test_segments_over_rest_follow_the_event_stream(server: Server) -> None:
    with server.client() as c:
        key = next(p["write_key"] for p in c.get("/api/v1/projects").json()
                   if p["name"] == "default")
        now = int(time.time() * 1000)

        def send(records: list[dict[str, Any]]) -> None:
            r = c.post(f"/api/v1/events?project=default&write_key={key}", json=records)
            assert r.status_code == 200 and r.json()["errors"] == [], r.text

        send([{"type": "profile", "op": "set", "identities": {"login_id": f"u{i}"},
               "properties": {"city": "SH" if i % 2 else "BJ"}} for i in range(4)])
        server.wait_ingested()

        bad = c.post("/api/v1/segments", json={"name": "x", "conditions": {
            "performed": "order", "within": "seven days"}})
        assert bad.status_code == 400
        assert bad.json()["error"]["field"] == "conditions.within"

        definition = {"name": "sh buyers", "conditions": {"all": [
            {"trait": "city", "value": "SH"},
            {"performed": "order", "within": "1d", "aggregate": {"sum": "amount"},
             "op": ">=", "value": 300}]}}
        r = c.post("/api/v1/segments/preview", json=definition)
        assert r.status_code == 200 and r.json()["count"] == 0
        r = c.post("/api/v1/segments", json=definition)
        assert r.status_code == 201, r.text
        assert r.json()["member_count"] == 0

        send([{"type": "track", "event": "order", "time": now,
               "identities": {"login_id": f"u{i}"}, "properties": {"amount": 200}}
              for i in range(4)])
        server.wait_ingested()
        assert _members(c, "sh buyers") == []
        send([{"type": "track", "event": "order", "time": now,
               "identities": {"login_id": f"u{i}"}, "properties": {"amount": 150}}
              for i in (1, 2)])
        got = _poll(lambda: _members(c, "sh buyers"))
        assert len(got) == 1
        user = got[0]

        hist = c.get("/api/v1/segments/sh buyers/history").json()
        assert [(h["user_id"], h["change"]) for h in hist] == [(user, "enter")]
        csv = c.get("/api/v1/segments/sh buyers/export")
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.text.splitlines()[0] == "user_id,member_since"
        assert csv.text.splitlines()[1].startswith(f"{user},")

        # A profile change alone, with no event, moves users on traits at once.
        r = c.post("/api/v1/segments", json={"name": "in bj", "conditions": {
            "trait": "city", "value": "BJ"}})
        assert r.status_code == 201 and r.json()["member_count"] == 2
        assert user not in _members(c, "in bj")
        send([{"type": "profile", "op": "set", "identities": {"login_id": "u1"},
               "properties": {"city": "BJ"}}])
        assert _poll(lambda: user in _members(c, "in bj") and not _members(c, "sh buyers"))
        hist = c.get("/api/v1/segments/sh buyers/history").json()
        assert [(h["user_id"], h["change"]) for h in hist][-1] == (user, "exit")

        r = c.put("/api/v1/segments/vips/csv", content=f"user_id\n{user}\nabc\n")
        assert r.status_code == 200
        assert r.json()["member_count"] == 1
        assert r.json()["errors"] == [{"field": "csv line 3.user_id",
                                       "rule": "must be an integer user id, got 'abc'"}]
        assert [s["name"] for s in c.get("/api/v1/segments").json()] == [
            "in bj", "sh buyers", "vips"]
        assert c.get("/api/v1/segments/nope").status_code == 404


def _cli(data: Path, *args: str, stdin: str | None = None) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "touchline", "segment", *args, "--data", str(data)],
        input=stdin, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_cli_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "vips.csv").write_text("user_id,name\n7,a\n9,b\nx,c\n")
    out = json.loads(_cli(data, "import-csv", "vips", str(tmp_path / "vips.csv")))
    assert out["member_count"] == 2 and len(out["errors"]) == 1
    definition = "name: vip or bucket\nconditions:\n  any:\n    - in_segment: vips\n"
    (tmp_path / "seg.yaml").write_text(definition)
    assert json.loads(_cli(data, "preview", str(tmp_path / "seg.yaml")))["count"] == 0
    created = json.loads(_cli(data, "create", "-", stdin=definition))
    assert created["kind"] == "dynamic"
    listed = json.loads(_cli(data, "list"))
    assert [(s["name"], s["members"]) for s in listed] == [("vip or bucket", 0), ("vips", 2)]
    assert json.loads(_cli(data, "show", "vips"))["source"]["csv"] == "vips.csv"
    members = json.loads(_cli(data, "members", "vips"))
    assert [m["user_id"] for m in members] == [7, 9]
    assert [line.split(",")[0] for line in _cli(data, "export", "vips").splitlines()] == [
        "user_id", "7", "9"]
    assert json.loads(_cli(data, "compute", "vip or bucket")) == {"entered": 0, "exited": 0}
    refused = subprocess.run(
        [sys.executable, "-m", "touchline", "segment", "delete", "vips", "--data", str(data)],
        capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "uses 'vips'" in refused.stderr
    assert "deleted" in _cli(data, "delete", "vip or bucket")
