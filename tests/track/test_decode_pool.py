"""The collector's decode pool: worker processes, stale project snapshots, dead workers."""

from __future__ import annotations

import base64
import gzip
import json
import os
import pickle
import signal
from typing import Any

from starlette.testclient import TestClient

from touchline.clock import VirtualClock
from touchline.errors import InvalidInput, PayloadError
from touchline.server.collect import DecodeOffload, collect_router
from touchline.track.decode_pool import DecodePool
from touchline.track.sink import MemorySink, Project, StaticProjects

NOW = 1_800_000_000_000


def form(records: Any) -> dict[str, str]:
    return {"data_list": base64.b64encode(gzip.compress(json.dumps(records).encode())).decode(),
            "gzip": "1"}


def track(i: int, project: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"type": "track", "event": "Tap", "time": NOW, "distinct_id": f"a-{i}",
                           "properties": {"i": i}}
    if project:
        rec["project"] = project
    return rec


def client(sink: MemorySink, live: StaticProjects, offload: DecodeOffload) -> TestClient:
    return TestClient(collect_router(sink=sink, projects=live, clock=VirtualClock(NOW),
                                     offload=offload), raise_server_exceptions=False)


def test_errors_cross_the_process_boundary_intact() -> None:
    err = PayloadError("data", "not valid gzip")
    err.index = 4
    err.args = ("record 4: data: not valid gzip",)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is PayloadError and back.as_dict() == err.as_dict()
    assert str(back) == str(err)
    assert isinstance(back, InvalidInput)


def test_a_project_the_snapshot_lacks_is_decoded_again_against_the_live_directory() -> None:
    pool = DecodePool(1)
    try:
        live = StaticProjects([Project("default", "wk1"), Project("new", "wk2")])
        stale = (Project("default", "wk1"),)  # taken before "new" was created
        sink = MemorySink()
        c = client(sink, live, DecodeOffload(lambda: stale, pool, min_bytes=0))
        assert c.post("/sa?project=new", data=form([track(1), track(2)])).status_code == 200
        assert [(r.project, r.distinct_id) for r in sink.records] == [("new", "a-1"),
                                                                      ("new", "a-2")]
        r = c.post("/v1/track", json={"writeKey": "wk2", "userId": "u", "event": "e"})
        assert r.status_code == 200 and sink.records[-1].project == "new"
        # A key unknown to both is still refused.
        r = c.post("/v1/track", json={"writeKey": "nope", "userId": "u", "event": "e"})
        assert r.status_code == 401
    finally:
        pool.close()


def test_a_killed_worker_leaves_the_collector_decoding_in_process() -> None:
    pool = DecodePool(1)
    try:
        (pid,) = pool.warm_up()
        live = StaticProjects([Project("default", "wk1")])
        sink = MemorySink()
        c = client(sink, live, DecodeOffload(live.snapshot, pool, min_bytes=0))
        assert c.post("/sa", data=form([track(1)])).status_code == 200
        os.kill(pid, signal.SIGKILL)
        for i in range(2, 5):  # the first of these finds the pool broken
            assert c.post("/sa", data=form([track(i)])).status_code == 200
        assert [r.distinct_id for r in sink.records] == ["a-1", "a-2", "a-3", "a-4"]
    finally:
        pool.close()


def test_the_pool_hands_back_log_bytes_not_records() -> None:
    pool = DecodePool(1)
    try:
        live = StaticProjects([Project("default", "wk1")])
        sink = MemorySink()
        c = client(sink, live, DecodeOffload(live.snapshot, pool, min_bytes=0))
        bad = {"type": "track", "event": "", "time": NOW, "distinct_id": "x"}
        r = c.post("/debug", data=form([track(1), bad, track(3)]))
        assert r.status_code == 400
        assert r.json()["errors"] == [{"field": "event", "rule": r.json()["errors"][0]["rule"],
                                       "index": 1}]
        assert [x.distinct_id for x in sink.records] == ["a-1", "a-3"]
        r = c.post("/sa", data=form([track(4)]), headers={"Dry-Run": "true"})
        assert r.status_code == 200 and len(sink.records) == 2
    finally:
        pool.close()
