"""The event store under the real ingest pipeline: log -> state store -> event store."""

from __future__ import annotations

from pathlib import Path

from touchline.clock import VirtualClock
from touchline.store.events import open_event_store
from touchline.store.state import open_state_store
from touchline.track.ingest import IngestPipeline, LogSink
from touchline.track.log import IngestLog
from touchline.track.records import Record
from touchline.track.stitch import StitchPolicy

NOW = 1_763_800_000_000


def _track(i: int, did: str, id_type: str = "anonymous_id") -> Record:
    return Record(kind="track", project="default", event_id=f"e{i}", time_ms=NOW + i,
                  received_ms=NOW + i, source="native", event="view_item", distinct_id=did,
                  identities={id_type: did}, properties={"n": i})


def test_pipeline_commits_stitched_events_and_survives_a_restart(tmp_path: Path) -> None:
    clock = VirtualClock(NOW)
    state = open_state_store("", tmp_path)
    events = open_event_store(tmp_path)
    log = IngestLog(tmp_path / "log", fsync=False)
    sink = LogSink(log)
    pipeline = IngestPipeline(log=log, state=state, events=events, policy=StitchPolicy(),
                              clock=clock)
    sink.submit_sync([_track(1, "anon1"), _track(2, "anon2")])
    signup = Record(kind="track", project="default", event_id="s1", time_ms=NOW + 3,
                    received_ms=NOW + 3, source="native", event="$SignUp", distinct_id="u1",
                    identities={"login_id": "u1", "anonymous_id": "anon1"}, link=True)
    sink.submit_sync([signup, _track(1, "anon1")])  # the last one: an exact resend
    pipeline.drain()
    assert events.get_offset() == log.end_offset
    rows = events.query("default", "SELECT event_id, user_id FROM events ORDER BY event_id",
                        timeout_s=5, max_rows=100).rows
    assert [r[0] for r in rows] == ["e1", "e2", "s1"]
    by_id = dict((r[0], r[1]) for r in rows)
    assert by_id["e1"] == by_id["s1"] != by_id["e2"]
    assert events.query("default", "SELECT count(*) FROM identities", timeout_s=5,
                        max_rows=5).rows == [[3]]
    events.close()
    log.close()

    # After a restart the duplicate filter is rebuilt from the store: a resend of an
    # event committed before the restart is still dropped.
    events = open_event_store(tmp_path)
    log = IngestLog(tmp_path / "log", fsync=False)
    pipeline = IngestPipeline(log=log, state=state, events=events, policy=StitchPolicy(),
                              clock=clock)
    LogSink(log).submit_sync([_track(2, "anon2"), _track(4, "anon4")])
    pipeline.drain()
    assert events.query("default", "SELECT count(*) FROM events", timeout_s=5,
                        max_rows=5).rows == [[4]]
    events.close()
    log.close()
    state.close()
