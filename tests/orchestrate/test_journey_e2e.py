"""End to end in one runtime: records through the ingest log and pipeline (stitching,
event store), the on_events hook into the journey engine, the outbox to a loopback
webhook receiver; then a dry run over the same stored events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ProviderState, serve, webhook_app, webhook_runtime

from touchline.orchestrate.hooks import journeys_for
from touchline.orchestrate.simulate import simulate_runtime
from touchline.orchestrate.stats import journey_stats
from touchline.orchestrate.storage import apply_journey
from touchline.orchestrate.validate import parse_journey
from touchline.runtime import Runtime
from touchline.track.records import Record

JOURNEY = """
id: rescue_e2e
entry: {type: event, event: cancel_order, correlation_key: order_id}
start: wait
nodes:
  wait: {type: wait, event: {event: pay, match_correlation: true}, timeout: 1s,
         next: paid, on_timeout: coupon}
  coupon:
    type: message
    channel: event.channel
    category: transactional
    quiet_hours: ignore
    body: "{{ profile.group | default: 'friend' }}: coupon for {{ event.order_id }}"
  paid: {type: exit, reason: paid}
goals:
  - {name: paid, event: {event: pay}, window: 1d}
"""


@pytest.fixture
def sink() -> Iterator[ProviderState]:
    state = ProviderState()
    with serve(webhook_app(state, "s3cret"), state):
        yield state


@pytest.fixture
def runtime(tmp_path: Path, sink: ProviderState) -> Iterator[Runtime]:
    with webhook_runtime(tmp_path, sink, admin_token="t", log_fsync=False,
                         ingest_interval_ms=10) as rt:
        yield rt


def track(user: str, event: str, t: int, eid: str, **props: object) -> Record:
    return Record(kind="track", project="default", event_id=eid, time_ms=t, received_ms=t,
                  source="test", event=event, distinct_id=user,
                  identities={"login_id": user}, properties=dict(props))


def profile(user: str, t: int, **props: object) -> Record:
    return Record(kind="profile", project="default", event_id=f"p-{user}", time_ms=t,
                  received_ms=t, source="test", distinct_id=user,
                  identities={"login_id": user}, properties=dict(props), op="set")


def test_ingest_to_journey_to_sink_and_dry_run(runtime: Runtime, sink: ProviderState) -> None:
    now = runtime.clock.now_ms()
    with runtime.state.transaction() as tx:
        apply_journey(tx, parse_journey(JOURNEY), now)
    runtime.start_workers()
    try:
        runtime.sink.submit_sync([
            profile("m1", now, group="family"),
            track("m1", "cancel_order", now, "e1", order_id="A", channel="app"),
            track("m2", "cancel_order", now, "e2", order_id="B", channel="app"),
            track("m2", "pay", now + 10, "e3", order_id="B"),
            track("m3", "view_menu", now, "e4"),
        ])
        deadline = time.monotonic() + 30
        while len(sink.seen_keys) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # nothing more may arrive
    finally:
        runtime.stop_workers()
    assert len(sink.seen_keys) == 1
    assert b"family: coupon for A" in sink.requests[0].body
    with runtime.state.transaction() as tx:
        stats = journey_stats(tx, "default", "rescue_e2e")
    assert stats["entered"] == 2
    assert stats["exit_reasons"] == {"paid": 1, "completed": 1}
    assert stats["converted"] == {"paid": 1}
    assert stats["messages"] == {"sent": 1}
    assert journeys_for(runtime).engine.book.active("default", "rescue_e2e")

    report = simulate_runtime(runtime, parse_journey(JOURNEY), start_ms=now - 1000,
                              end_ms=now + 60_000)
    assert report.events_read == 3  # the two cancellations and the payment
    assert report.entered == 2
    assert report.messages == {"coupon": 1}
    assert report.goals == {"paid": 1}
