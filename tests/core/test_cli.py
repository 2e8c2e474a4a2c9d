"""The `touchline` command end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from touchline.config import SETTINGS


def tl(*args: str, data: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "touchline", *args, "--data", str(data)],
        capture_output=True, text=True, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"touchline {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_config_lists_every_setting(tmp_path: Path) -> None:
    out = tl("config", data=tmp_path).stdout
    for s in SETTINGS:
        assert f"{s.name} = " in out


def test_projects_import_and_query(tmp_path: Path) -> None:
    tl("project", "create", "shop", "--write-key", "shop-key", data=tmp_path)
    listed = tl("project", "list", data=tmp_path).stdout
    assert "shop\tshop-key" in listed and "default\t" in listed
    dup = tl("project", "create", "shop", data=tmp_path, check=False)
    assert dup.returncode != 0 and "shop" in dup.stderr

    now = int(time.time() * 1000)
    lines = [
        {"type": "track", "event": "view_menu", "time": now, "distinct_id": "a1",
         "properties": {"channel": "app"}},
        {"type": "track", "event": "bad name!", "time": now, "distinct_id": "a1", "properties": {}},
        {"type": "track_signup", "event": "$SignUp", "time": now + 1, "distinct_id": "m1",
         "original_id": "a1", "properties": {}},
        {"type": "track", "event": "pay", "time": now + 2, "distinct_id": "m1",
         "properties": {"$is_login_id": True, "amount": 30}},
    ]
    f = tmp_path / "in.ndjson"
    f.write_text("\n".join(json.dumps(r) for r in lines) + "\nnot json\n")
    out = tl("import", str(f), "--project", "shop", data=tmp_path).stdout
    assert ":2: event:" in out, out  # the bad line is named by its number and field
    assert ":5:" in out
    rows = json.loads(tl("query", "SELECT count(DISTINCT user_id), count(*) FROM events",
                         "--project", "shop", "--format", "json", data=tmp_path).stdout)["rows"]
    assert rows == [[1, 3]]  # anonymous browsing, sign-up and payment: one customer
    other = json.loads(tl("query", "SELECT count(*) FROM events", "--format", "json",
                          data=tmp_path).stdout)["rows"]
    assert other == [[0]]  # nothing crossed into the default project
    refused = tl("query", "DELETE FROM events", "--project", "shop", data=tmp_path, check=False)
    assert refused.returncode != 0 and "select" in refused.stderr.lower()


def test_demo_builds_a_small_restaurant(tmp_path: Path) -> None:
    out = tl("demo", "--no-serve", "--customers", "300", "--days", "20", data=tmp_path).stdout
    assert "customers (stitched)" in out
    rows = json.loads(tl("query", "SELECT count(*), count(DISTINCT event) FROM events",
                         "--format", "json", data=tmp_path).stdout)["rows"]
    assert rows[0][0] > 2_000 and rows[0][1] >= 10
    again = tl("demo", "--no-serve", data=tmp_path).stdout
    assert "already holds data" in again


def test_python_api_queries_and_analyzes(tmp_path: Path) -> None:
    import touchline

    tl("demo", "--no-serve", "--customers", "200", "--days", "15", data=tmp_path)
    with touchline.open(tmp_path) as api:
        df = api.query("SELECT event, count(*) AS n FROM events GROUP BY 1 ORDER BY n DESC")
        assert list(df.columns) == ["event", "n"] and df["n"].sum() > 1000
        import datetime as dt

        import pytest

        today = dt.date.today()
        spec = {"from": str(today - dt.timedelta(days=40)), "to": str(today + dt.timedelta(days=1)),
                "events": [{"event": "pay"}], "interval": "day"}
        result = api.analyze("events", spec)
        assert result["kind"] == "events"
        with pytest.raises(touchline.InvalidInput, match="from"):
            api.analyze("events", {"events": [{"event": "pay"}]})
