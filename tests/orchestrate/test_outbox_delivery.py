"""Outbox delivery: real webhook channel against a loopback receiver, real policy,
real state store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from servers import ProviderState, serve, webhook_app
from test_journey_support import apply

# Fixtures, re-exported so pytest finds them here.
from test_journey_support import engine as engine
from test_journey_support import jstore as jstore

from touchline.clock import VirtualClock
from touchline.orchestrate import policy as pol
from touchline.orchestrate.channels import RetryPolicy, WebhookChannel
from touchline.orchestrate.engine import Engine
from touchline.orchestrate.outbox import DeliveryPolicy, Outbox, set_consent

SECRET = "s3cret"
NOON_SHANGHAI = int(datetime(2023, 11, 15, 4, 0, tzinfo=UTC).timestamp() * 1000)
MIDNIGHT_SHANGHAI = int(datetime(2023, 11, 15, 16, 0, tzinfo=UTC).timestamp() * 1000)

THREE = """
id: three
entry: {type: api}
re_entry: {mode: after_exit}
start: m1
nodes:
  m1: {type: message, channel: app, body: "first {{ event.code }}", priority: 9,
       next: m2}
  m2: {type: message, channel: app, body: "second", priority: 1, next: m3}
  m3: {type: message, channel: app, body: "third", priority: 5}
"""

ONE = """
id: one
entry: {type: api}
re_entry: {mode: after_exit}
start: m
nodes:
  m: {type: message, channel: app, body: "hello {{ profile.name }}", category: transactional}
"""


@pytest.fixture
def sink() -> Iterator[ProviderState]:
    state = ProviderState(hang_s=1.0)
    with serve(webhook_app(state, SECRET), state):
        yield state


def make_outbox(engine: Engine, sink: ProviderState, timeout_s: float = 2.0,
                **kw: Any) -> Outbox:
    channel = WebhookChannel({"url": sink.base_url + "/hook", "secret": SECRET,
                              "timeout_s": timeout_s}, clock=engine.clock)
    kw.setdefault("retry", RetryPolicy(max_attempts=3, initial_s=0.01, max_backoff_s=0.05))
    return Outbox(engine.store, engine.clock, {"app": channel}, **kw)


def rows(engine: Engine) -> dict[str, tuple[Any, ...]]:
    with engine.store.transaction() as tx:
        return {r[0]: tuple(r) for r in tx.fetchall(
            "SELECT node, status, last_error, next_ms, message_id, attempts FROM journey_outbox")}


# One event loop per test: a channel's HTTP client belongs to the loop it first ran on,
# as it does in the delivery worker.
_LOOP: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(autouse=True)
def loop() -> Iterator[None]:
    _LOOP.append(asyncio.new_event_loop())
    yield
    _LOOP.pop().close()


def run(coro: Any) -> Any:
    return _LOOP[-1].run_until_complete(coro)


def drain(ob: Outbox) -> int:
    total = 0
    while n := run(ob.run_once()):
        total += n
    return total


def test_sends_with_message_id_as_idempotency_key(engine: Engine, sink: ProviderState) -> None:
    assert isinstance(engine.clock, VirtualClock)
    engine.clock.set(NOON_SHANGHAI)
    apply(engine, THREE)
    for uid in range(1, 6):
        engine.enter_api("default", "three", uid, {"code": f"C{uid}"})
    ob = make_outbox(engine, sink)
    assert drain(ob) == 15  # 10 sent, 5 held back by the cap
    with engine.store.transaction() as tx:
        out = tx.fetchall("SELECT message_id, node, status, last_error FROM journey_outbox")
        log = tx.fetchall("SELECT message_id, status FROM journey_delivery")
    by_node: dict[str, list[str]] = {}
    for _mid, node, status, _ in out:
        by_node.setdefault(node, []).append(status)
    # Caps: 2 marketing messages a day; the two highest priorities (m1, m3) go.
    assert by_node == {"m1": ["sent"] * 5, "m3": ["sent"] * 5, "m2": ["skipped"] * 5}
    assert all("frequency cap" in r[3] for r in out if r[1] == "m2")
    sent_ids = {r[0] for r in out if r[2] == "sent"}
    assert set(sink.seen_keys) == sent_ids
    assert all(v == 1 for v in sink.seen_keys.values())
    assert {(m, s) for m, s in log if m in sent_ids and s == "sent"} == {
        (m, "sent") for m in sent_ids}
    bodies = [r.body for r in sink.requests]
    assert any(b'"first C3"' in b for b in bodies)


def test_quiet_hours_defer_and_consent_skip(engine: Engine, sink: ProviderState) -> None:
    assert isinstance(engine.clock, VirtualClock)
    engine.clock.set(MIDNIGHT_SHANGHAI)
    apply(engine, THREE)
    engine.enter_api("default", "three", 1, {"code": "x"})
    engine.enter_api("default", "three", 2, {"code": "y"})
    with engine.store.transaction() as tx:
        set_consent(tx, "default", 2, pol.ConsentState().unsubscribe(None), MIDNIGHT_SHANGHAI)
    ob = make_outbox(engine, sink)
    run(ob.run_once())
    with engine.store.transaction() as tx:
        out = {(r[0], r[1]): (r[2], r[3], r[4]) for r in tx.fetchall(
            "SELECT user_id, node, status, next_ms, last_error FROM journey_outbox")}
    eight_am = int(datetime(2023, 11, 16, 0, 0, tzinfo=UTC).timestamp() * 1000)
    assert out[(1, "m1")] == ("deferred", eight_am, "quiet hours")
    assert out[(2, "m1")][0] == "skipped" and "unsubscribed" in out[(2, "m1")][2]
    assert sink.requests == []
    engine.clock.set(eight_am)
    drain(ob)
    assert len(sink.seen_keys) == 2  # user 1: m1 and m3 (cap of two a day)


def test_missing_variable_skips_never_half_renders(engine: Engine,
                                                   sink: ProviderState) -> None:
    assert isinstance(engine.clock, VirtualClock)
    engine.clock.set(NOON_SHANGHAI)
    apply(engine, ONE)
    engine.enter_api("default", "one", 1)
    ob = make_outbox(engine, sink, profiles=lambda tx, p, ids: {2: {"name": "Li"}})
    engine.enter_api("default", "one", 2)
    drain(ob)
    status = {r[1]: (r[2], r[3]) for r in _all(engine)}
    assert status[1][0] == "skipped" and "template" in status[1][1]
    assert status[2][0] == "sent"
    assert [b"hello Li" in r.body for r in sink.requests] == [True]


def _all(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.store.transaction() as tx:
        return [tuple(r) for r in tx.fetchall(
            "SELECT message_id, user_id, status, last_error FROM journey_outbox")]


def test_provider_errors_retry_then_fail_while_others_flow(
        engine: Engine, sink: ProviderState) -> None:
    assert isinstance(engine.clock, VirtualClock)
    engine.clock.set(NOON_SHANGHAI)
    apply(engine, ONE)
    for uid in range(1, 21):
        engine.enter_api("default", "one", uid)
    ob = make_outbox(engine, sink, timeout_s=0.3,
                     profiles=lambda tx, p, ids: {i: {"name": "x"} for i in ids})
    ids = sorted(r[0] for r in _all(engine))
    sink.hang_keys.add(ids[0])  # one receiver call always times out
    drain(ob)
    final = {r[0]: (r[2], r[3]) for r in _all(engine)}
    assert final[ids[0]][0] == "failed"
    assert "gave up after 3 attempt(s)" in final[ids[0]][1]
    assert all(final[i][0] == "sent" for i in ids[1:])
    with engine.store.transaction() as tx:
        log = [r[0] for r in tx.fetchall(
            "SELECT status FROM journey_delivery WHERE message_id = ? ORDER BY id", (ids[0],))]
    assert log == ["sending", "retried", "retried", "failed"]


def test_5xx_is_retried_with_backoff(engine: Engine, sink: ProviderState) -> None:
    assert isinstance(engine.clock, VirtualClock)
    engine.clock.set(NOON_SHANGHAI)
    apply(engine, ONE)
    engine.enter_api("default", "one", 1)
    sink.script.extend([503, 500])
    drain(make_outbox(engine, sink, profiles=lambda tx, p, ids: {1: {"name": "x"}}))
    assert [r[2] for r in _all(engine)] == ["sent"]
    assert len(sink.requests) == 3


def test_lease_expiry_resends_with_same_id(engine: Engine, sink: ProviderState) -> None:
    """A worker that dies after claiming leaves 'sending' rows; they go again, same id."""
    assert isinstance(engine.clock, VirtualClock)
    engine.clock.set(NOON_SHANGHAI)
    apply(engine, ONE)
    engine.enter_api("default", "one", 1)
    ob = make_outbox(engine, sink, profiles=lambda tx, p, ids: {1: {"name": "x"}},
                     lease_ms=5_000)
    batch = ob.claim()
    results = run(ob.send(batch))  # sent, then the process "dies" before record
    assert results[0][1] == "sent"
    assert run(ob.run_once()) == 0  # leased: nobody else takes it
    engine.clock.advance(6)
    assert run(ob.run_once()) == 1
    (mid, _, status, _), = _all(engine)
    assert status == "sent"
    assert sink.seen_keys == {mid: 2}  # the receiver sees the same key twice and dedupes


PROMO = """
id: promo
entry: {type: api}
re_entry: {mode: after_exit}
start: first
nodes:
  first: {type: message, channel: app, body: "set", content: {key: family_set},
          category: transactional, next: wait}
  wait: {type: wait, event: {event: pay}, timeout: 1h, next: again, on_timeout: again}
  again: {type: message, channel: sms, body: "set", content: {key: family_set},
          category: transactional}
goals:
  - {name: paid, event: {event: pay}, window: 1d}
"""


def test_cross_channel_dedup_after_acting(engine: Engine, sink: ProviderState) -> None:
    from test_journey_support import ev

    assert isinstance(engine.clock, VirtualClock)
    engine.clock.set(NOON_SHANGHAI)
    apply(engine, PROMO)
    engine.enter_api("default", "promo", 1)
    engine.enter_api("default", "promo", 2)
    ob = make_outbox(engine, sink)
    ob.channels["sms"] = ob.channels["app"]
    drain(ob)
    # User 1 acts (pays) after the app message: the same content on SMS is held back.
    engine.clock.advance(60)
    engine.handle_events([ev(1, "pay", engine.clock.now_ms())])
    engine.clock.advance(3600)
    engine.run_due()
    drain(ob)
    with engine.store.transaction() as tx:
        out = {(r[0], r[1]): (r[2], r[3]) for r in tx.fetchall(
            "SELECT user_id, channel, status, last_error FROM journey_outbox")}
    assert out[(1, "app")][0] == "sent" and out[(2, "app")][0] == "sent"
    assert out[(1, "sms")][0] == "skipped" and "already acted" in out[(1, "sms")][1]
    assert out[(2, "sms")][0] == "sent"


def test_rate_limit_defers(engine: Engine, sink: ProviderState) -> None:
    assert isinstance(engine.clock, VirtualClock)
    engine.clock.set(NOON_SHANGHAI)
    apply(engine, ONE)
    for uid in (1, 2, 3):
        engine.enter_api("default", "one", uid)
    ob = make_outbox(engine, sink, policy=DeliveryPolicy(rate_limits={"app": (1.0, 1.0)}),
                     profiles=lambda tx, p, ids: {i: {"name": "x"} for i in ids})
    run(ob.run_once())
    statuses = sorted(r[2] for r in _all(engine))
    assert statuses == ["deferred", "deferred", "sent"]
    engine.clock.advance(1.1)
    run(ob.run_once())
    engine.clock.advance(1.1)
    run(ob.run_once())
    assert sorted(r[2] for r in _all(engine)) == ["sent", "sent", "sent"]
