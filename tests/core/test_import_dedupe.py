"""An import through a running server and live collection of the same records: each
record is stored once, whichever arrives first."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_raw_ingest import request, run_async

from touchline.config import load_settings
from touchline.runtime import open_runtime
from touchline.server.core_hooks import _run_import
from touchline.track import ingest as ingest_mod
from touchline.track.sensors import sensors_raw_batch


def records(now: int) -> list[dict[str, Any]]:
    return [{"type": "track", "event": "pay", "time": now - i, "distinct_id": "m1",
             "properties": {"$is_login_id": True, "amount": i}} for i in range(3)]


def count(rt: Any) -> int:
    result = rt.events.query("default", "SELECT count(*) FROM events", timeout_s=10,
                             max_rows=1)
    return int(result.rows[0][0])


def history(tmp_path: Path, now: int) -> Path:
    path = tmp_path / "history.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in records(now)) + "\n")
    return path


def test_acknowledged_before_the_import_and_applied_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_mod, "REMEMBER_ROWS", 2)  # the ids taken in slices
    now = int(time.time() * 1000)
    path = history(tmp_path, now)
    rt = open_runtime(load_settings(tmp_path / "data", env={}))
    try:
        # In the log, not applied yet: the import cannot see these in the store.
        run_async(rt.sink.submit_raw(sensors_raw_batch(request(records(now)[:2]), now)))
        report = _run_import(rt, path, "default", "sensors")
        assert report.loaded == 3
        rt.pipeline.drain()
        assert count(rt) == 3
        assert rt.pipeline.stats.duplicates == 2
    finally:
        rt.close()


def test_imported_first_then_sent_live(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    path = history(tmp_path, now)
    rt = open_runtime(load_settings(tmp_path / "data", env={}))
    try:
        assert _run_import(rt, path, "default", "sensors").loaded == 3
        run_async(rt.sink.submit_raw(sensors_raw_batch(request(records(now)), now)))
        rt.pipeline.drain()
        assert count(rt) == 3
    finally:
        rt.close()
