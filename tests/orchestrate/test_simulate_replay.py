"""Dry runs in virtual time, stats per node, timelines, and the Arrow event path."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
from test_journey_support import T0, apply, ev

# Fixtures, re-exported so pytest finds them here.
from test_journey_support import engine as engine
from test_journey_support import jstore as jstore

from touchline.orchestrate.engine import Engine, JourneyEvent
from touchline.orchestrate.simulate import events_from_arrow, simulate
from touchline.orchestrate.stats import journey_stats, user_timeline
from touchline.orchestrate.validate import parse_journey

DEMO = Path(__file__).resolve().parents[2] / "src/touchline/demo/journeys"
MIN = 60_000


def rescue_events(n: int) -> list[JourneyEvent]:
    """User u cancels at minute u; u%3==0 pays after 10 min, u%3==1 after 50 min."""
    out = []
    for u in range(n):
        t = T0 + u * MIN
        out.append(JourneyEvent("default", u, "cancel_order", t,
                                {"order_id": f"o{u}", "reason": "price", "channel": "app"},
                                f"c{u}"))
        if u % 3 == 0:
            out.append(JourneyEvent("default", u, "pay", t + 10 * MIN, {"order_id": f"o{u}"},
                                    f"p{u}"))
        elif u % 3 == 1:
            out.append(JourneyEvent("default", u, "pay", t + 50 * MIN, {"order_id": f"o{u}"},
                                    f"p{u}"))
    return out


def test_simulation_counts_what_would_happen() -> None:
    j = parse_journey((DEMO / "cancelled_order_rescue.yaml").read_text())
    events = rescue_events(300)
    events.reverse()  # any order in, time order inside
    report = simulate(j, events, start_ms=T0, end_ms=T0 + 10 * 86_400_000)
    assert report.entered == 300
    assert report.nodes == {"wait_for_payment": 300, "send_coupon": 200}
    assert report.messages == {"send_coupon": 200}
    # Paid within 3 days: those who paid before the coupon and those who paid after.
    assert report.goals == {"paid": 200}
    assert report.exits == {"paid": 100, "completed": 200}
    assert report.still_in == 0


def test_simulation_respects_the_window() -> None:
    j = parse_journey((DEMO / "cancelled_order_rescue.yaml").read_text())
    report = simulate(j, rescue_events(30), start_ms=T0, end_ms=T0 + 20 * MIN)
    assert report.entered == 20
    assert report.still_in == 20 - 4  # users 0, 3, 6, 9 paid before minute 20
    assert report.messages == {}


def test_segment_journey_simulation_with_profiles() -> None:
    j = parse_journey((DEMO / "dormant_family_winback.yaml").read_text())
    profiles = {u: {"$timezone": "Asia/Shanghai", "group": "family"} for u in range(10)}
    report = simulate(j, [JourneyEvent("default", 1, "submit_order", T0 + 4 * 86_400_000,
                                       {}, "o1")],
                      start_ms=T0, end_ms=T0 + 14 * 86_400_000,
                      profiles=lambda p, ids: {i: profiles[i] for i in ids if i in profiles},
                      segment_members=list(range(10)))
    assert report.entered == 10
    assert sum(report.messages.values()) == 10
    assert report.exits == {"came_back": 1, "no_response": 9}


def test_stats_and_timeline(engine: Engine) -> None:
    apply(engine, (DEMO / "cancelled_order_rescue.yaml").read_text())
    engine.handle_events([ev(u, "cancel_order", T0, order_id=f"o{u}", reason="price",
                             channel="app") for u in range(1, 5)])
    engine.handle_events([ev(1, "pay", T0 + MIN, order_id="o1")])
    assert isinstance(engine.clock.now_ms(), int)
    engine.clock.advance(31 * 60)  # type: ignore[attr-defined]
    engine.run_due()
    with engine.store.transaction() as tx:
        s = journey_stats(tx, "default", "cancelled_order_rescue")
        line = user_timeline(tx, "default", 2)
    assert (s["entered"], s["active"], s["exited"]) == (4, 0, 4)
    assert s["exit_reasons"] == {"paid": 1, "completed": 3}
    assert s["converted"] == {"paid": 1}
    assert s["messages"] == {"queued": 3}
    assert s["nodes"]["wait_for_payment"]["reached"] == 4
    assert s["nodes"]["send_coupon"]["messages"] == {"queued": 3}
    assert s["nodes"]["wait_for_payment"]["converted"] == {"paid": 1}
    assert [x["kind"] for x in line] == ["enter", "wait", "timeout", "message", "exit"]
    assert line[3]["detail"]["delivery"] == "queued"


def test_events_from_arrow() -> None:
    table = pa.table({
        "project": ["default", "default", "default"],
        "event_id": ["a", "b", "c"],
        "event": ["pay", "pay", "cancel_order"],
        "user_id": pa.array([1, None, 3], pa.int64()),
        "time": pa.array([T0, T0 + 1, T0 + 2], pa.timestamp("ms")),
        "properties": [orjson.dumps({"order_id": "o1"}).decode(), "{}", "not json"],
    })
    out = events_from_arrow(table)
    assert [(e.user_id, e.event, e.time_ms, e.properties) for e in out] == [
        (1, "pay", T0, {"order_id": "o1"}), (3, "cancel_order", T0 + 2, {})]


VIP_SPLIT = """
id: vip_split
entry: {type: event, event: cancel_order}
start: who
nodes:
  who:
    type: condition
    branches:
      - {name: vip, when: {in_segment: vips}, next: vip_note}
    default: plain_note
  vip_note: {type: message, channel: app, category: transactional, body: "VIP", next: done}
  plain_note: {type: message, channel: app, category: transactional, body: "Hi", next: done}
  done: {type: exit}
"""


def test_segment_conditions_see_todays_memberships() -> None:
    from touchline.orchestrate.simulate import referenced_segments

    j = parse_journey(VIP_SPLIT)
    assert referenced_segments(j) == {"vips"}
    events = [JourneyEvent("default", u, "cancel_order", T0 + u * MIN, {}, f"c{u}")
              for u in range(6)]
    report = simulate(j, events, start_ms=T0, end_ms=T0 + 86_400_000,
                      memberships={"vips": [1, 4]})
    assert report.messages == {"vip_note": 2, "plain_note": 4}
    # Without memberships nobody is in the segment (and nothing fails).
    report = simulate(j, events, start_ms=T0, end_ms=T0 + 86_400_000)
    assert report.messages == {"plain_note": 6}
