"""The journey engine on the real state store (SQLite and PostgreSQL), in virtual time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_journey_support import T0, apply, ev, outbox, set_profile, states

# Fixtures, re-exported so pytest finds them here.
from test_journey_support import engine as engine
from test_journey_support import jstore as jstore

from touchline.clock import VirtualClock
from touchline.errors import InvalidInput
from touchline.orchestrate import segments
from touchline.orchestrate.engine import Engine, message_id, stable_fraction
from touchline.orchestrate.worker import consume_segment_signals

DEMO = Path(__file__).resolve().parents[2] / "src/touchline/demo/journeys"


def clock_of(e: Engine) -> VirtualClock:
    assert isinstance(e.clock, VirtualClock)
    return e.clock


def log_kinds(e: Engine, user: int) -> list[tuple[str | None, str]]:
    with e.store.transaction() as tx:
        return [(r[0], r[1]) for r in tx.fetchall(
            "SELECT node, kind FROM journey_log WHERE user_id = ? ORDER BY id", (user,))]


def test_cancelled_order_rescue(engine: Engine) -> None:
    apply(engine, (DEMO / "cancelled_order_rescue.yaml").read_text())
    c = clock_of(engine)
    engine.handle_events([
        ev(1, "cancel_order", T0, order_id="o1", reason="price", channel="app"),
        ev(2, "cancel_order", T0, order_id="o2", reason="price", channel="wecom"),
        ev(3, "cancel_order", T0, order_id="o3", reason="price", channel="mini_program"),
    ])
    # User 2 pays the cancelled order, user 3 pays another order: only 2 leaves.
    engine.handle_events([ev(2, "pay", T0 + 60_000, order_id="o2"),
                          ev(3, "pay", T0 + 60_000, order_id="other")])
    c.advance(29 * 60)
    assert engine.run_due() == 0
    c.advance(61)
    assert engine.run_due() > 0
    rows = {r[0]: r for r in states(engine.store)}
    assert rows[1][3] == "done" and rows[1][5] == "completed"
    assert rows[2][5] == "paid"
    msgs = outbox(engine.store)
    assert [(m[0], m[1], m[2]) for m in msgs] == [(1, "send_coupon", "app"),
                                                   (3, "send_coupon", "mini_program")]
    assert msgs[0][4] == message_id("cancelled_order_rescue", 1, 1, "send_coupon", "k:o1")
    # A payment within 3 days counts, once, attributed to the message node.
    engine.handle_events([ev(1, "pay", c.now_ms(), order_id="o1"),
                          ev(1, "pay", c.now_ms() + 1, order_id="o1", eid="dup")])
    with engine.store.transaction() as tx:
        goals = tx.fetchall("SELECT user_id, goal, message_node FROM journey_goals "
                            "ORDER BY user_id")
    assert [tuple(g) for g in goals] == [(1, "paid", "send_coupon"), (2, "paid", None),
                                         (3, "paid", None)]


def test_replayed_events_do_not_double_enter_or_send(engine: Engine) -> None:
    apply(engine, (DEMO / "cancelled_order_rescue.yaml").read_text())
    batch = [ev(1, "cancel_order", T0, order_id="o1", reason="price", channel="app")]
    engine.handle_events(batch)
    engine.handle_events(batch)
    assert len(states(engine.store)) == 1
    clock_of(engine).advance(3600)
    engine.run_due()
    engine.run_due()
    assert len(outbox(engine.store)) == 1


SPLITS = """
id: splits
entry: {type: event, event: signup}
re_entry: {mode: never}
start: by_group
nodes:
  by_group:
    type: condition
    branches:
      - {name: fam, when: {profile.group: family, event.amount: {gte: 100}}, next: ab}
      - {name: office, when: {profile.group: {in: [white_collar]}}, next: hello}
    default: bye
  ab:
    type: random
    branches:
      - {name: a, weight: 1, next: hello}
      - {name: b, weight: 3, next: bye}
  hello: {type: update_profile, set: {greeted: true}, next: bye}
  bye: {type: exit, reason: done}
"""


def test_condition_and_random_split(engine: Engine) -> None:
    apply(engine, SPLITS)
    for uid, group in [(1, "family"), (2, "white_collar"), (3, "student")]:
        set_profile(engine.store, uid, {"group": group})
    seen: list[Any] = []
    engine.on_profile_update = lambda p, u, props: seen.append((u, props))
    engine.handle_events([ev(1, "signup", T0, amount=150), ev(2, "signup", T0, amount=5),
                          ev(3, "signup", T0)])
    with engine.store.transaction() as tx:
        rows = tx.fetchall("SELECT user_id, node, detail FROM journey_log WHERE kind = 'node' "
                           "ORDER BY user_id, id")
    branches = {(r[0], r[1]): r[2] for r in rows}
    assert '"fam"' in branches[(1, "by_group")]
    assert '"office"' in branches[(2, "by_group")]
    assert '"default"' in branches[(3, "by_group")]
    arm = "a" if stable_fraction(1, "splits", "ab") < 0.25 else "b"
    assert f'"{arm}"' in branches[(1, "ab")]
    assert (2, {"greeted": True}) in seen
    # Never re-enter: a second signup does nothing.
    engine.handle_events([ev(2, "signup", T0 + 1000)])
    assert len([s for s in states(engine.store) if s[0] == 2]) == 1


def test_random_split_is_stable_and_weighted() -> None:
    fractions = [stable_fraction(u, "j", "n") for u in range(20_000)]
    assert fractions == [stable_fraction(u, "j", "n") for u in range(20_000)]
    share = sum(f < 0.25 for f in fractions) / len(fractions)
    assert 0.23 < share < 0.27


def test_winback_friday_ten_local_and_experiment(engine: Engine) -> None:
    apply(engine, (DEMO / "dormant_family_winback.yaml").read_text())
    set_profile(engine.store, 7, {"$timezone": "Asia/Shanghai", "group": "family"})
    set_profile(engine.store, 8, {"$timezone": "America/New_York", "group": "family"})
    with engine.store.transaction() as tx:
        segments.save_static_segment(tx, "default", "dormant_family_21d", [7, 8],
                                     {"kind": "test"})
    assert consume_segment_signals(engine) == 2
    due = {r[0]: r[4] for r in states(engine.store)}
    shanghai = datetime.fromtimestamp(due[7] / 1000, UTC)
    new_york = datetime.fromtimestamp(due[8] / 1000, UTC)
    # Friday 2023-11-17 10:00 local: 02:00 UTC in Shanghai, 15:00 UTC in New York.
    assert shanghai == datetime(2023, 11, 17, 2, 0, tzinfo=UTC)
    assert new_york == datetime(2023, 11, 17, 15, 0, tzinfo=UTC)
    clock_of(engine).set(due[7])
    engine.run_due()
    msgs = outbox(engine.store)
    assert [m[0] for m in msgs] == [7]
    arm = "discount" if stable_fraction(7, "dormant_family_winback",
                                        "family_set_discount") < 0.5 else "plain"
    # The content experiment uses the experiment node's hash, so the arm is as before.
    assert msgs[0][1] == "offer"
    with engine.store.transaction() as tx:
        assert tx.fetchone("SELECT variant FROM journey_outbox")[0] == arm
    # Leaving the segment exits from anywhere.
    with engine.store.transaction() as tx:
        segments.replace_members(tx, "default", "dormant_family_21d", [7], T0)
    consume_segment_signals(engine)
    rows = {r[0]: r for r in states(engine.store)}
    assert rows[8][3] == "done" and rows[8][5] == "active_again"


def test_membership_renewal_until_property(engine: Engine) -> None:
    apply(engine, (DEMO / "membership_renewal.yaml").read_text())
    set_profile(engine.store, 5, {"group": "white_collar", "is_paid_member": True,
                                  "membership_expires_at": "2023-11-30",
                                  "$timezone": "Asia/Shanghai"})
    set_profile(engine.store, 6, {"group": "student", "is_paid_member": True,
                                  "membership_expires_at": "2023-11-30"})
    engine.enter_users("default", "membership_renewal", [5, 6], "s:test")
    engine.run_due()
    due = {r[0]: r[4] for r in states(engine.store)}
    # 2023-11-30 00:00 Shanghai minus 7 days = 2023-11-22 16:00 UTC.
    assert due[5] == int(datetime(2023, 11, 22, 16, tzinfo=UTC).timestamp() * 1000)
    clock_of(engine).set(due[5])
    engine.run_due()
    assert [(m[0], m[2]) for m in outbox(engine.store)] == [(5, "app")]
    assert {r[0]: r[5] for r in states(engine.store)}[6] == "not_eligible"
    clock_of(engine).advance(2 * 86400 + 1)
    engine.run_due()
    assert [(m[0], m[2]) for m in outbox(engine.store)] == [(5, "app"), (5, "sms")]
    engine.handle_events([ev(5, "membership_renew", clock_of(engine).now_ms())])
    assert {r[0]: r[5] for r in states(engine.store)}[5] == "renewed"


REENTRY = """
id: reentry
entry: {type: event, event: visit}
re_entry: {mode: cooldown, cooldown: 1h}
entry_cap: {per_user: 2}
start: d
nodes:
  d: {type: delay, duration: 10m}
"""


def test_reentry_cooldown_and_cap(engine: Engine) -> None:
    apply(engine, REENTRY)
    c = clock_of(engine)
    engine.handle_events([ev(1, "visit", T0)])
    engine.handle_events([ev(1, "visit", T0 + 1)])  # still in the journey
    c.advance(600)
    engine.run_due()
    engine.handle_events([ev(1, "visit", c.now_ms())])  # within the cool-down
    assert len(states(engine.store)) == 1
    c.advance(3601)
    engine.handle_events([ev(1, "visit", c.now_ms())])
    c.advance(601)
    engine.run_due()
    c.advance(3601)
    engine.handle_events([ev(1, "visit", c.now_ms())])  # cap of 2 reached
    assert len(states(engine.store)) == 2


V1 = """
id: mig
entry: {type: api}
start: wait
nodes:
  wait: {type: delay, duration: 1d, next: old_msg}
  old_msg: {type: message, channel: sms, body: old}
"""
V2 = """
id: mig
entry: {type: api}
start: wait2
nodes:
  wait2: {type: delay, duration: 1h, next: new_msg}
  new_msg: {type: message, channel: sms, body: new}
"""


def test_new_version_keeps_or_migrates_users(engine: Engine) -> None:
    apply(engine, V1)
    assert engine.enter_api("default", "mig", 1)
    apply(engine, V2)
    assert engine.enter_api("default", "mig", 2)
    c = clock_of(engine)
    c.advance(3601)
    engine.run_due()
    assert [(m[0], m[1]) for m in outbox(engine.store)] == [(2, "new_msg")]
    c.advance(86400)
    engine.run_due()
    assert [(m[0], m[1]) for m in outbox(engine.store)] == [(1, "old_msg"), (2, "new_msg")]
    # Migration: a user in flight at v1's "wait" moves to v3's "wait2".
    apply(engine, V1)  # v3 = v1 again
    assert engine.enter_api("default", "mig", 3)
    apply(engine, V2, migrate={"wait": "wait2"})
    engine.run_due()
    rows = [r for r in states(engine.store) if r[0] == 3]
    assert rows[0][2] == "wait2"
    c.advance(3601)
    engine.run_due()
    assert (3, "new_msg") in [(m[0], m[1]) for m in outbox(engine.store)]


def test_api_entry_rules(engine: Engine) -> None:
    apply(engine, """
id: api_j
entry: {type: api, required_properties: [coupon]}
start: m
nodes:
  m: {type: message, channel: sms, body: "{{ event.coupon }}"}
""")
    with pytest.raises(InvalidInput) as err:
        engine.enter_api("default", "api_j", 1, {})
    assert err.value.field == "properties.coupon"
    assert engine.enter_api("default", "api_j", 1, {"coupon": "C1"}, key="req-1")
    assert not engine.enter_api("default", "api_j", 1, {"coupon": "C1"}, key="req-1")
    assert len(outbox(engine.store)) == 1


def test_pause_freezes_timers(engine: Engine) -> None:
    from touchline.orchestrate.storage import set_status

    apply(engine, REENTRY)
    engine.handle_events([ev(1, "visit", T0)])
    with engine.store.transaction() as tx:
        set_status(tx, "default", "reentry", "paused", T0)
    engine.refresh()
    clock_of(engine).advance(3600)
    assert engine.run_due() == 0
    engine.handle_events([ev(2, "visit", T0)])
    assert len(states(engine.store)) == 1
    with engine.store.transaction() as tx:
        set_status(tx, "default", "reentry", "active", T0)
    engine.refresh()
    assert engine.run_due() > 0
    assert states(engine.store)[0][3] == "done"


SCHEDULED = """
id: weekly
entry: {type: schedule, segment: members, cron: "0 10 * * 5", user_time_zone: true}
re_entry: {mode: after_exit}
start: wait_join
nodes:
  wait_join: {type: wait, segment: vip, change: enter, timeout: 1d, next: welcome,
              on_timeout: gone}
  welcome: {type: message, channel: sms, body: hi}
  gone: {type: exit, reason: no_vip}
"""


def test_cron_schedule_in_each_users_zone_and_segment_wait(engine: Engine) -> None:
    apply(engine, SCHEDULED)
    set_profile(engine.store, 1, {"$timezone": "Asia/Shanghai"})
    set_profile(engine.store, 2, {"$timezone": "Europe/London"})
    with engine.store.transaction() as tx:
        segments.save_static_segment(tx, "default", "members", [1, 2], {"kind": "test"})
    c = clock_of(engine)
    assert engine.run_schedules() == 0  # the first run only sets the cursor
    shanghai = int(datetime(2023, 11, 17, 2, 0, tzinfo=UTC).timestamp() * 1000)
    london = int(datetime(2023, 11, 17, 10, 0, tzinfo=UTC).timestamp() * 1000)
    c.set(shanghai - 1)
    assert engine.run_schedules() == 0
    c.set(shanghai)
    assert engine.run_schedules() == 1  # Friday 10:00 in Shanghai: user 1 only
    engine.run_due()
    c.set(london)
    assert engine.run_schedules() == 1
    engine.run_due()
    assert engine.run_schedules() == 0  # each firing enters once
    consume_segment_signals(engine)  # the members segment's own signals: no effect
    with engine.store.transaction() as tx:
        segments.save_static_segment(tx, "default", "vip", [2], {"kind": "test"})
    consume_segment_signals(engine)
    assert [(m[0], m[1]) for m in outbox(engine.store)] == [(2, "welcome")]
    c.set(shanghai + 86_400_000 + 1)
    engine.run_due()
    reasons = {r[0]: r[5] for r in states(engine.store)}
    assert reasons == {1: "no_vip", 2: "completed"}
