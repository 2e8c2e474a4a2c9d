"""The report straight over the journey engine's tables, on SQLite and PostgreSQL: a
split with two variants and a control (each variant, and all variants pooled, against
the control), a goal reached before the entry's window, and the uplift arithmetic at
its edges."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from test_journey_support import T0, apply, ev

# Fixtures, re-exported so pytest finds them here.
from test_journey_support import engine as engine
from test_journey_support import jstore as jstore

from touchline.errors import InvalidInput, NotFound
from touchline.optimize import ReportRequest, journey_report
from touchline.optimize.uplift import mean_uplift, proportion_uplift
from touchline.orchestrate.engine import Engine
from touchline.store.events import EventStore, open_event_store

THREE_WAY = {
    "id": "three_way",
    "entry": {"type": "api"},
    "start": "split",
    "nodes": {
        "split": {"type": "experiment", "experiment": "tone",
                  "variants": [{"name": "warm", "weight": 1, "next": "warm_msg"},
                               {"name": "bold", "weight": 1, "next": "bold_msg"}],
                  "control": {"name": "holdout", "weight": 1, "next": "done"}},
        "warm_msg": {"type": "message", "channel": "sms", "body": "hi",
                     "category": "transactional", "next": "done"},
        "bold_msg": {"type": "message", "channel": "sms", "body": "HI",
                     "category": "transactional", "next": "done"},
        "done": {"type": "exit"},
    },
    "goals": [{"name": "visited", "event": {"event": "visit"}, "window": "1d"}],
}
RATE = {"warm": 3, "bold": 2, "holdout": 6}  # user u converts when u % RATE[arm] == 0


@pytest.fixture
def events(tmp_path: Path) -> Iterator[EventStore]:
    store = open_event_store(tmp_path / "events")
    yield store
    store.close()


def run(engine: Engine) -> dict[int, str]:
    apply(engine, THREE_WAY)
    for u in range(1, 301):
        assert engine.enter_api("default", "three_way", u, {}, key="k")
    with engine.store.transaction() as tx:
        arms = {int(u): orjson.loads(d)["branch"] for u, d in tx.fetchall(
            "SELECT user_id, detail FROM journey_log WHERE node = 'split' AND kind = 'node'")}
    engine.handle_events([ev(u, "visit", T0 + 1000) for u, a in arms.items()
                          if u % RATE[a] == 0])
    # Before any entry's window opened: no conversion.
    engine.handle_events([ev(5, "visit", T0 - 1000, eid="early")])
    return arms


def test_each_variant_and_pooled_against_control(engine: Engine, events: EventStore) -> None:
    arms = run(engine)
    with engine.store.transaction() as tx:
        report = journey_report(tx, events, "default", "three_way",
                                ReportRequest(costs={"sms": 0.05}, min_arm_users=50))
    section = report["experiments"][0]
    assert (section["node"], section["baseline"]) == ("split", "holdout")
    rows = {r["arm"]: r for r in section["arms"]}
    assert [r["arm"] for r in section["arms"]] == ["warm", "bold", "holdout"]
    counts = {a: sum(1 for v in arms.values() if v == a) for a in RATE}
    won = {a: sum(1 for u, v in arms.items() if v == a and u % RATE[a] == 0) for a in RATE}
    for a in RATE:
        assert rows[a]["users"] == counts[a]
        assert rows[a]["converted"] == {"visited": won[a]}
        # Queued, never delivered: nothing sent, nothing spent.
        assert (rows[a]["messages"], rows[a]["cost"], rows[a]["gmv"]) == (0, 0, 0)
    for a in ("warm", "bold"):
        p1, p0 = won[a] / counts[a], won["holdout"] / counts["holdout"]
        assert rows[a]["uplift"]["conversion"]["absolute"] == pytest.approx(p1 - p0, abs=1e-6)
        assert rows[a]["roi"] is None  # no cost, no ROI
    pooled = section["pooled"]
    n = counts["warm"] + counts["bold"]
    x = won["warm"] + won["bold"]
    assert (pooled["arm"], pooled["users"], pooled["converted"]["visited"]) == (
        "all variants", n, x)
    ref = proportion_uplift(x, n, won["holdout"], counts["holdout"])
    assert pooled["uplift"]["conversion"]["p_value"] == pytest.approx(ref.p_value, abs=1e-6)
    assert report["totals"]["users"] == 300
    assert report["totals"]["converted"]["visited"] == sum(won.values())
    # Every arm compared with a control of that size gets a verdict at 50 users a arm.
    assert all(rows[a]["significant"] is not None for a in ("warm", "bold"))


def test_requests_that_break_a_rule(engine: Engine, events: EventStore) -> None:
    run(engine)
    with engine.store.transaction() as tx:
        for req, field in ((ReportRequest(goal="nope"), "goal"),
                           (ReportRequest(min_arm_users=0), "min_arm_users"),
                           (ReportRequest(costs={"sms": -1}), "cost.sms"),
                           (ReportRequest(baselines={"split": "warm"}), "baseline.split")):
            with pytest.raises(InvalidInput) as exc:
                journey_report(tx, events, "default", "three_way", req)
            assert exc.value.field == field
        with pytest.raises(NotFound):
            journey_report(tx, events, "default", "missing", ReportRequest())


def test_uplift_edges() -> None:
    empty = proportion_uplift(0, 0, 3, 10)
    assert (empty.absolute, empty.p_value) == (None, None)
    # A control that never converted: an absolute uplift, no relative one.
    never = proportion_uplift(4, 10, 0, 10)
    assert never.absolute == pytest.approx(0.4) and never.relative is None
    # Everyone converted everywhere: no evidence either way, and no p-value invented.
    same = proportion_uplift(10, 10, 10, 10)
    assert same.absolute == 0 and same.p_value is None
    flat = mean_uplift([0.0, 0.0, 0.0], [0.0, 0.0])
    assert flat.absolute == 0 and flat.p_value is None and flat.relative is None
    u = mean_uplift([10.0, 0.0, 20.0, 0.0], [0.0, 5.0, 0.0, 5.0])
    assert u.absolute == pytest.approx(5.0) and u.relative == pytest.approx(2.0)  # 7.5 vs 2.5
    assert u.absolute_ci is not None and u.absolute_ci[0] < 5.0 < u.absolute_ci[1]
    assert u.p_value is not None and 0 < u.p_value < 1
    d = u.to_dict()
    assert d["absolute"] == 5.0 and len(d["absolute_ci"]) == 2
    assert not any(isinstance(v, float) and math.isnan(v) for v in d.values())
