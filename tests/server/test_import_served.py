"""`touchline import` while a server owns the data directory: the server imports."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from serverproc import Server


def run_import(server: Server, path: Path) -> str:
    env = {**os.environ, "TOUCHLINE_ADMIN_TOKEN": server.token}
    out = subprocess.run(
        [sys.executable, "-m", "touchline", "import", str(path), "--data", str(server.data)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_goes_through_the_running_server(server: Server, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    lines = [
        json.dumps({"type": "track", "event": "view_menu", "time": now - 5000,
                    "distinct_id": "anon-1", "properties": {}}),
        "{not json",
        json.dumps({"type": "track_signup", "event": "$SignUp", "time": now - 4000,
                    "distinct_id": "m-1", "original_id": "anon-1", "properties": {}}),
        json.dumps({"type": "track", "event": "bad name", "time": now - 3000,
                    "distinct_id": "m-1", "properties": {}}),
        json.dumps({"type": "track", "event": "pay", "time": now - 2000, "distinct_id": "m-1",
                    "properties": {"$is_login_id": True, "amount": 5}}),
    ]
    path = tmp_path / "history.ndjson"
    path.write_text("\n".join(lines) + "\n")
    live = [{"type": "track", "event": "dine", "time": now, "distinct_id": "m-1",
             "properties": {"$is_login_id": True}}]
    with server.client() as c:
        r = c.post("/sa?project=default",
                   data={"data_list": base64.b64encode(json.dumps(live).encode()).decode()})
        assert r.status_code == 200

    out = run_import(server, path)
    assert "loaded 3 of 5 lines" in out, out
    assert "history.ndjson:2:" in out and "history.ndjson:4: event:" in out, out
    server.wait_ingested()
    # The anonymous browsing, the sign-up, the purchase and the live event: one customer.
    assert server.query("SELECT count(DISTINCT user_id), count(*) FROM events") == [[1, 4]]

    run_import(server, path)  # the same file again stores nothing twice
    assert server.query("SELECT count(*) FROM events") == [[4]]
    with server.client() as c:
        r = c.post("/api/v1/import", params={"project": "nowhere"}, content=b"{}")
        assert r.status_code == 404 and "nowhere" in r.text
        r = c.post("/api/v1/import", params={"format": "xml"}, content=b"{}")
        assert r.status_code == 400 and "format" in r.text
    assert not list((server.data / "imports").iterdir())
