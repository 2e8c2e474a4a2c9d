"""The delivery loop claims when it is woken, not only when its poll comes round.

The loops here poll once an hour, so a message that goes out at all went out because
the step that wrote it woke the loop: an event step (``Outbox.wake`` as the journeys
plugin calls it after ``handle_events``) or a timer round (``JourneyWorker``'s
``on_progress``). Real webhook channel, loopback receiver, real state store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import ProviderState, serve, webhook_app
from test_journey_support import apply

# Fixtures, re-exported so pytest finds them here.
from test_journey_support import engine as engine
from test_journey_support import jstore as jstore

from touchline.clock import VirtualClock
from touchline.orchestrate.channels import WebhookChannel
from touchline.orchestrate.engine import Engine
from touchline.orchestrate.outbox import Outbox
from touchline.orchestrate.worker import DeliveryWorker, JourneyWorker

SECRET = "s3cret"
HOUR_S = 3600.0

NOW = """
id: now
entry: {type: api}
start: m
nodes:
  m: {type: message, channel: app, body: "now", category: transactional,
      quiet_hours: ignore}
"""

LATER = """
id: later
entry: {type: api}
start: wait
nodes:
  wait: {type: delay, duration: 1m, next: m}
  m: {type: message, channel: app, body: "later", category: transactional,
      quiet_hours: ignore}
"""


@pytest.fixture
def sink() -> Iterator[ProviderState]:
    state = ProviderState()
    with serve(webhook_app(state, SECRET), state):
        yield state


def outbox(engine: Engine, sink: ProviderState) -> Outbox:
    channel = WebhookChannel({"url": sink.base_url + "/hook", "secret": SECRET},
                             clock=engine.clock)
    return Outbox(engine.store, engine.clock, {"app": channel})


def eventually(cond: Callable[[], bool], limit_s: float = 30.0) -> bool:
    """Whether ``cond`` holds within ``limit_s`` (a bound on a hang, not a timing)."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def bodies(sink: ProviderState) -> list[bytes]:
    return [r.body for r in sink.requests]


def settle(engine: Engine, ob: Outbox, sink: ProviderState) -> bool:
    """Start-up claims once: after this first message the loop waits its hour."""
    engine.enter_api("default", "now", 1)
    ob.wake()
    return eventually(lambda: len(sink.seen_keys) == 1)


# On failure the loops are left running (daemon threads): stopping one that missed
# its wake-up would wait out its hour.


def test_event_step_wakes_the_delivery_loop(engine: Engine, sink: ProviderState) -> None:
    apply(engine, NOW)
    ob = outbox(engine, sink)
    worker = DeliveryWorker(ob, poll_s=HOUR_S)
    worker.start()
    assert settle(engine, ob, sink)
    engine.enter_api("default", "now", 2)
    ob.wake()
    assert eventually(lambda: len(sink.seen_keys) == 2)
    worker.stop()  # returns at once: stop wakes the hour-long wait too
    assert all(n == 1 for n in sink.seen_keys.values())
    assert worker.errors == 0


def test_timer_round_wakes_the_delivery_loop(engine: Engine, sink: ProviderState) -> None:
    assert isinstance(engine.clock, VirtualClock)
    apply(engine, NOW)
    apply(engine, LATER)
    ob = outbox(engine, sink)
    delivery = DeliveryWorker(ob, poll_s=HOUR_S)
    timers = JourneyWorker(engine, poll_s=0.01, signals=False, on_progress=ob.wake)
    delivery.start()
    timers.start()
    assert settle(engine, ob, sink)
    engine.enter_api("default", "later", 2)
    engine.clock.advance(61)  # the delay is over; only the timer round wakes delivery
    assert eventually(lambda: len(sink.seen_keys) == 2)
    timers.stop()
    delivery.stop()
    assert any(b'"later"' in b for b in bodies(sink))
    assert timers.errors == 0 and delivery.errors == 0


def test_delivery_concurrency_setting_reaches_the_workers(tmp_path: Path) -> None:
    from touchline.config import load_settings
    from touchline.errors import ConfigError
    from touchline.orchestrate.hooks import journeys_for, workers
    from touchline.runtime import open_runtime

    rt = open_runtime(load_settings(tmp_path, env={"TOUCHLINE_DELIVERY_CONCURRENCY": "12"},
                                    admin_token="t"), ingest=False)
    try:
        assert journeys_for(rt).outbox.concurrency == 12
        delivery = [w for w in workers(rt) if isinstance(w, DeliveryWorker)]
        assert [w.batch for w in delivery] == [96]
    finally:
        rt.close()
    bad = open_runtime(load_settings(tmp_path / "bad", env={}, admin_token="t",
                                     delivery_concurrency=0), ingest=False)
    try:
        with pytest.raises(ConfigError, match="delivery_concurrency"):
            journeys_for(bad)
    finally:
        bad.close()
