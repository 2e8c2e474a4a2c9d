"""Loaded through the real importer and stores, anonymous browsing joins the member.

The demo is loaded as a Sensors file (the importer keeps the historical times; see
docs/demo.md). Every anonymous id that a ``$SignUp`` linked must end up on the same
user as the member id it was linked to, and the deliberate junk must be refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from conftest import END_MS
from touchline.config import load_settings
from touchline.demo import generate, write_sensors_ndjson
from touchline.runtime import open_runtime
from touchline.track.importer import import_files


def test_import_stitches_anonymous_browsing_to_members(tmp_path: Path) -> None:
    path = tmp_path / "demo.ndjson"
    written = write_sensors_ndjson(path, 21, customers=300, days=30, end_ms=END_MS)
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(records) == written
    assert records == [r for b in generate(21, customers=300, days=30, end_ms=END_MS)
                       for r in b]
    links = {r["original_id"]: r["distinct_id"] for r in records if r["type"] == "track_signup"}
    assert len(links) > 50

    rt = open_runtime(load_settings(tmp_path / "data", env={}), ingest=False)
    try:
        report = import_files([path], project="default", fmt="sensors",
                              event_store=rt.events, state_store=rt.state,
                              time_window=False)
        assert 0 < report.rejected < 0.002 * len(records)
        assert {i.field for i in report.issues} <= {
            "distinct_id", "event", "properties.order-source", "properties.date"}
        result = rt.events.query(
            "default", "SELECT distinct_id, min(user_id), max(user_id) FROM events "
            "GROUP BY distinct_id", timeout_s=60, max_rows=1_000_000)
    finally:
        rt.close()
    user: dict[str, Any] = {}
    for distinct_id, lo, hi in result.rows:
        assert lo == hi  # one distinct id never splits over two users
        user[distinct_id] = lo
    stitched = [anon for anon, login in links.items() if anon in user and login in user]
    assert len(stitched) > 0.8 * len(links)
    assert all(user[anon] == user[links[anon]] for anon in stitched)
