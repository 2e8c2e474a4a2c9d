"""Batches the stitched subscribers (journeys) had not finished come back after a restart.

The pipeline hands each batch to ``on_stitched_events`` before the event store commits
it; the position they have finished is kept in the state store, the ingest log is kept
from there, and a restart hands them again whatever lies between that position and the
stores. Here the crash is staged by moving the position back, as if the process had died
with the batch still in the dispatcher's queue.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from pathlib import Path
from typing import Any

from touchline.config import load_settings
from touchline.plugins import hookimpl
from touchline.runtime import open_runtime
from touchline.track.decode import CollectRequest
from touchline.track.ingest import STITCHED_CURSOR
from touchline.track.sensors import decode_sensors


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    @hookimpl
    def on_stitched_events(self, runtime: Any, events: Any) -> None:
        self.events += zip(events.column("event_id").to_pylist(),
                           events.column("user_id").to_pylist(), strict=True)


def send(rt: Any, n: int, start: int) -> None:
    now = int(time.time() * 1000)
    records = [{"type": "track", "event": "cancel_order", "time": now + i,
                "distinct_id": f"m{i % 7}", "properties": {"$is_login_id": True, "i": i}}
               for i in range(start, start + n)]
    body = base64.b64encode(gzip.compress(json.dumps(records).encode())).decode()
    req = CollectRequest(method="POST", path="/sa", query={"project": "default"},
                         headers={}, body=f"data_list={body}&gzip=1".encode())
    rt.sink.submit_sync(decode_sensors(req, rt.projects, now).records)


def test_unfinished_batches_are_handed_over_again_after_a_restart(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={})
    rt = open_runtime(settings)
    first = Recorder()
    rt.plugins.register(first)
    send(rt, 30, 0)
    rt.pipeline.drain()
    send(rt, 20, 30)
    rt.pipeline.drain()
    assert len(first.events) == 50
    with rt.state.transaction() as tx:
        done = tx.find_offset(STITCHED_CURSOR)
        assert done == rt.pipeline.offset
        # The crash: the second batch never reached the subscribers.
        tx.set_offset(STITCHED_CURSOR, first_batch_end(rt))
    rt.close()

    rt = open_runtime(settings)
    again = Recorder()
    rt.plugins.register(again)
    rt.stitched_dispatcher.start()
    rt.pipeline.start()
    try:
        deadline = time.monotonic() + 30
        while len(again.events) < 20:
            assert time.monotonic() < deadline, again.events
            time.sleep(0.05)
    finally:
        rt.close()
    assert sorted(again.events) == sorted(first.events[30:])
    rt = open_runtime(settings)
    try:
        with rt.state.transaction() as tx:
            assert tx.find_offset(STITCHED_CURSOR) == rt.pipeline.offset
    finally:
        rt.close()


def first_batch_end(rt: Any) -> int:
    ends = [end for end, _ in rt.log.read(0)]
    return ends[0]


def test_a_new_data_directory_replays_nothing(tmp_path: Path) -> None:
    rt = open_runtime(load_settings(tmp_path, env={}))
    try:
        with rt.state.transaction() as tx:
            assert tx.find_offset(STITCHED_CURSOR) == 0
    finally:
        rt.close()


def test_the_log_is_kept_until_the_stitched_subscribers_are_done(tmp_path: Path) -> None:
    rt = open_runtime(load_settings(tmp_path, env={}, log_segment_bytes=4096))
    try:
        log_dir = tmp_path / "log"
        record_position = rt.stitched_dispatcher._on_delivered
        rt.stitched_dispatcher._on_delivered = None  # the subscribers fall behind
        for i in range(6):
            send(rt, 20, i * 20)
            rt.pipeline.drain()
        kept = len(list(log_dir.iterdir()))
        assert kept >= 4  # every segment since the subscribers' position
        rt.stitched_dispatcher._on_delivered = record_position
        send(rt, 20, 200)
        rt.pipeline.drain()  # they catch up: the next release frees the old segments
        send(rt, 20, 220)
        rt.pipeline.drain()
        assert len(list(log_dir.iterdir())) < kept
    finally:
        rt.close()
