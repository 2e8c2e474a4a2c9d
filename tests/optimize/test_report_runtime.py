"""The Optimize report over a real runtime: a journey with an experiment split (a coupon
arm and a control group) and a content experiment, entered through the ingest pipeline
(identity stitching, the event store, the journey engine), messages delivered to a
loopback webhook, purchases with known amounts; then the report through the Python
API, REST and the CLI, checked against figures computed here by hand."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from scipy import stats
from servers import ProviderState, serve, webhook_app

from touchline.cli import cli
from touchline.clock import VirtualClock
from touchline.config import load_settings
from touchline.optimize import ReportRequest, report_for
from touchline.optimize.hooks import register_commands as optimize_commands
from touchline.orchestrate.hooks import journeys_for
from touchline.orchestrate.hooks import register_commands as journey_commands
from touchline.orchestrate.storage import apply_journey
from touchline.orchestrate.validate import parse_journey
from touchline.runtime import Runtime, open_runtime
from touchline.server.app import create_app
from touchline.track.records import Record

TOKEN = "optimize-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_790_812_800_000  # 2026-10-01T00:00:00Z
H = 3_600_000
D = 24 * H
FIRST, SECOND = range(0, 160), range(160, 200)  # entered on day one, on day two
COST = 0.01  # per webhook message
Z = 1.959963984540054
Who = dict[int, tuple[int, str, "str | None"]]  # index -> (user id, arm, variant)

PROMO: dict[str, Any] = {
    "id": "promo",
    "entry": {"type": "event", "event": "signup"},
    "re_entry": {"mode": "never"},
    "start": "split",
    "nodes": {
        "split": {"type": "experiment", "experiment": "coupon_test",
                  "variants": [{"name": "coupon", "weight": 1, "next": "send"}],
                  "control": {"name": "control", "weight": 1, "next": "done"}},
        "send": {"type": "message", "channel": "webhook", "category": "transactional",
                 "quiet_hours": "ignore", "body": "hello",
                 "variants": [{"id": "big", "body": "20% off"}, {"id": "small", "body": "5% off"}],
                 "decision": {"strategy": "experiment"}, "next": "done"},
        "done": {"type": "exit"},
    },
    "goals": [{"name": "purchased", "event": {"event": "purchase"}, "window": "3d"},
              {"name": "visited", "event": {"event": "visit"}, "window": "3d"}],
}


def track(eid: str, event: str, t: int, login: str, **props: Any) -> Record:
    return Record(kind="track", project="default", event_id=eid, time_ms=t, received_ms=t,
                  source="native", event=event, distinct_id=login,
                  identities={"login_id": login}, properties=props)


def converts(i: int, arm: str) -> bool:
    return i % 3 != 0 if arm == "coupon" else i % 4 == 0


def first_amount(i: int) -> float:
    return 10.0 + (i % 7) * 5


def value(i: int, arm: str) -> float:
    """What user i spends inside the window: the first purchase, a second for even i."""
    if not converts(i, arm):
        return 0.0
    return first_amount(i) + (7.0 if i % 2 == 0 else 0.0)


@pytest.fixture
def sink() -> Iterator[ProviderState]:
    state = ProviderState()
    with serve(webhook_app(state, "s3cret"), state):
        yield state


class World:
    """The runtime after the journey ran; ``who``: per user index, (user id, arm, variant)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.who: Who = {}
        self.open = True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.rt.close()


def deliver(rt: Runtime) -> None:
    """Send every queued message on one event loop (a channel's HTTP client belongs to
    the loop it first ran on), then close the channels' clients."""
    outbox = journeys_for(rt).outbox
    loop = asyncio.new_event_loop()
    try:
        while loop.run_until_complete(outbox.run_once()):
            pass
        for channel in outbox.channels.values():
            loop.run_until_complete(channel.aclose())
    finally:
        loop.close()


@pytest.fixture
def world(tmp_path: Path, sink: ProviderState) -> Iterator[World]:
    (tmp_path / "channels.yaml").write_text(
        f"webhook: {{type: webhook, url: '{sink.base_url}/hook', secret: s3cret}}\n")
    clock = VirtualClock(T0 + H)
    rt = open_runtime(load_settings(tmp_path, env={}, admin_token=TOKEN), clock=clock)
    w = World(rt)
    try:
        with rt.state.transaction() as tx:
            apply_journey(tx, parse_journey(PROMO), clock.now_ms())
        journeys_for(rt).engine.refresh()
        # Day one: 160 signups; day two: 40 more (the date-range filter splits them).
        for users, day in ((FIRST, 0), (SECOND, 1)):
            clock.set(T0 + day * D + H)
            rt.sink.submit_sync([track(f"s{i}", "signup", T0 + day * D + i * 1000, f"u{i}", n=i)
                                 for i in users])
            rt.pipeline.drain(timeout=60)
            deliver(rt)
        who = w.who = _assignments(rt)
        assert sorted(who) == list(range(200))
        clock.set(T0 + 8 * D)
        buys = []
        for i, (_, arm, _) in who.items():
            start = T0 + (D if i in SECOND else 0) + i * 1000
            if converts(i, arm):
                buys.append(track(f"b{i}", "purchase", start + 2 * H, f"u{i}",
                                  amount=first_amount(i)))
                if i % 2 == 0:
                    buys.append(track(f"c{i}", "purchase", start + 2 * D, f"u{i}", amount=7))
                # After the 3-day window: neither a conversion nor money.
                buys.append(track(f"l{i}", "purchase", start + 4 * D, f"u{i}", amount=1000))
            if i % 5 == 0:
                buys.append(track(f"v{i}", "visit", start + H, f"u{i}"))
        buys.append(track("x1", "purchase", T0 + 2 * H, "stranger", amount=50))
        rt.sink.submit_sync(buys)
        rt.pipeline.drain(timeout=60)
        yield w
    finally:
        w.close()


def _assignments(rt: Runtime) -> Who:
    """Read back from the engine's own tables which arm and variant each user got."""
    with rt.state.transaction() as tx:
        index = {int(u): int(orjson.loads(d)["event"]["n"]) for u, d in tx.fetchall(
            "SELECT user_id, data FROM journey_states WHERE journey_id = 'promo'")}
        arms = {int(u): orjson.loads(d)["branch"] for u, d in tx.fetchall(
            "SELECT user_id, detail FROM journey_log WHERE journey_id = 'promo' "
            "AND node = 'split' AND kind = 'node'")}
        variants = {int(u): str(v) for u, v, s in tx.fetchall(
            "SELECT user_id, variant, status FROM journey_outbox WHERE journey_id = 'promo'")
            if s == "sent"}
    return {i: (u, arms[u], variants.get(u)) for u, i in index.items()}


def prop_ref(x1: int, n1: int, x0: int, n0: int) -> dict[str, Any]:
    p1, p0 = x1 / n1, x0 / n0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    pooled = (x1 + x0) / (n1 + n0)
    z = (p1 - p0) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    se_log = math.sqrt(1 / x1 - 1 / n1 + 1 / x0 - 1 / n0)
    return {"absolute": p1 - p0, "absolute_ci": [p1 - p0 - Z * se, p1 - p0 + Z * se],
            "relative": p1 / p0 - 1,
            "relative_ci": [p1 / p0 * math.exp(-Z * se_log) - 1,
                            p1 / p0 * math.exp(Z * se_log) - 1],
            "p_value": math.erfc(abs(z) / math.sqrt(2))}


def welch_ref(a: list[float], c: list[float]) -> dict[str, Any]:
    n1, n0 = len(a), len(c)
    m1, m0 = sum(a) / n1, sum(c) / n0
    v1 = sum((x - m1) ** 2 for x in a) / (n1 - 1)
    v0 = sum((x - m0) ** 2 for x in c) / (n0 - 1)
    se = math.sqrt(v1 / n1 + v0 / n0)
    df = (v1 / n1 + v0 / n0) ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v0 / n0) ** 2 / (n0 - 1))
    q = float(stats.t.ppf(0.975, df))
    rse = (m1 / m0) * math.sqrt(v1 / (n1 * m1 * m1) + v0 / (n0 * m0 * m0))
    return {"absolute": m1 - m0, "absolute_ci": [m1 - m0 - q * se, m1 - m0 + q * se],
            "relative": m1 / m0 - 1, "relative_ci": [m1 / m0 - 1 - Z * rse, m1 / m0 - 1 + Z * rse],
            "p_value": float(2 * stats.t.sf(abs(m1 - m0) / se, df))}


def close(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, list):
            assert got == pytest.approx(want, abs=1e-5), key
        else:
            assert got == pytest.approx(want, abs=1e-5), key


def expected_arm(who: Who, members: list[int],
                 arm: str) -> dict[str, Any]:
    won = [i for i in members if converts(i, who[i][1])]
    gmv = sum(value(i, who[i][1]) for i in members)
    sent = sum(1 for i in members if who[i][2] is not None)
    return {"users": len(members), "won": len(won), "gmv": gmv,
            "visited": sum(1 for i in members if i % 5 == 0), "messages": sent,
            "values": [value(i, who[i][1]) for i in members]}


def check_split(report: dict[str, Any], who: Who,
                users: range, min_users: int) -> None:
    split = next(s for s in report["experiments"] if s["node"] == "split")
    assert split["kind"] == "split" and split["baseline"] == "control"
    rows = {r["arm"]: r for r in split["arms"]}
    exp = {arm: expected_arm(who, [i for i in users if who[i][1] == arm], arm)
           for arm in ("coupon", "control")}
    for arm, e in exp.items():
        r = rows[arm]
        assert r["control"] == (arm == "control")
        assert r["users"] == e["users"]
        assert r["converted"] == {"purchased": e["won"], "visited": e["visited"]}
        assert r["conversion_rate"] == pytest.approx(e["won"] / e["users"], abs=1e-6)
        assert r["gmv"] == pytest.approx(e["gmv"])
        assert r["arpu"] == pytest.approx(e["gmv"] / e["users"], abs=1e-6)
        assert r["messages"] == e["messages"]
        assert r["cost"] == pytest.approx(e["messages"] * COST)
    assert exp["control"]["messages"] == 0
    assert exp["coupon"]["messages"] == exp["coupon"]["users"]
    t, c = exp["coupon"], exp["control"]
    coupon = rows["coupon"]
    close(coupon["uplift"]["conversion"], prop_ref(t["won"], t["users"], c["won"], c["users"]))
    close(coupon["uplift"]["arpu"], welch_ref(t["values"], c["values"]))
    incremental = (t["gmv"] / t["users"] - c["gmv"] / c["users"]) * t["users"]
    assert coupon["incremental_gmv"] == pytest.approx(incremental, abs=0.01)
    cost = t["messages"] * COST
    assert coupon["roi"] == pytest.approx((incremental - cost) / cost, rel=1e-4)
    assert "uplift" not in rows["control"]
    if min(t["users"], c["users"]) < min_users:
        assert coupon["verdict"] == "too few users" and coupon["significant"] is None
    else:
        assert coupon["significant"] is True and coupon["verdict"] == "better"


def test_report_against_hand_computed_figures(world: World) -> None:
    rt, who = world.rt, world.who
    report = report_for(rt, "promo", ReportRequest(costs={"webhook": COST}, min_arm_users=30))
    assert report["goal"] == "purchased" and report["value_property"] == "amount"
    every = list(range(200))
    total = expected_arm(who, every, "all")
    assert report["totals"]["users"] == 200
    assert report["totals"]["gmv"] == pytest.approx(total["gmv"])
    assert report["totals"]["converted"]["purchased"] == total["won"]
    assert report["totals"]["messages"] == total["messages"]
    check_split(report, who, range(200), 30)

    # Content experiment: each variant against the first one, goals after its message.
    content = next(s for s in report["experiments"] if s["node"] == "send")
    assert content["kind"] == "content" and content["baseline"] == "big"
    rows = {r["arm"]: r for r in content["arms"]}
    for variant in ("big", "small"):
        members = [i for i in every if who[i][2] == variant]
        e = expected_arm(who, members, variant)
        assert (rows[variant]["users"], rows[variant]["converted"]["purchased"],
                rows[variant]["gmv"]) == (e["users"], e["won"], pytest.approx(e["gmv"]))
        assert rows[variant]["messages"] == e["users"]
    assert rows["small"]["roi"] is None  # variants against a variant: no control to earn over
    big = expected_arm(who, [i for i in every if who[i][2] == "big"], "big")
    small = expected_arm(who, [i for i in every if who[i][2] == "small"], "small")
    close(rows["small"]["uplift"]["conversion"],
          prop_ref(small["won"], small["users"], big["won"], big["users"]))


def test_small_arms_get_no_verdict_and_date_range(world: World) -> None:
    rt, who = world.rt, world.who
    report = report_for(rt, "promo", ReportRequest(costs={"webhook": COST}))  # 100 a arm
    check_split(report, who, range(200), 100)
    # Entries of day one only (entered before noon of day one).
    first = report_for(rt, "promo", ReportRequest(costs={"*": COST}, end_ms=T0 + 12 * H,
                                                  min_arm_users=30))
    assert first["totals"]["users"] == len(FIRST)
    check_split(first, who, FIRST, 30)
    none = report_for(rt, "promo", ReportRequest(start_ms=T0 + 9 * D))
    assert none["totals"]["users"] == 0
    assert all(r["users"] == 0 for s in none["experiments"] for r in s["arms"])


def test_goal_and_value_property_choices(world: World) -> None:
    rt, who = world.rt, world.who
    visited = report_for(rt, "promo", ReportRequest(goal="visited", min_arm_users=30))
    rows = {r["arm"]: r for r in visited["experiments"][0]["arms"]}
    for arm in ("coupon", "control"):
        members = [i for i in range(200) if who[i][1] == arm]
        assert rows[arm]["converted"]["visited"] == sum(1 for i in members if i % 5 == 0)
        assert rows[arm]["gmv"] == 0  # visits carry no amount
        assert rows[arm]["cost"] == 0  # no price given
    # A property no purchase carries: conversions stay, money is zero.
    other = report_for(rt, "promo", ReportRequest(value_property="price"))
    assert other["totals"]["gmv"] == 0
    assert other["totals"]["converted"]["purchased"] > 0


def test_rest_and_cli(world: World, tmp_path: Path) -> None:
    rt, who = world.rt, world.who
    client = TestClient(create_app(rt, start_workers=False))
    res = client.get("/api/v1/journeys/promo/report", headers=AUTH,
                     params={"cost": "webhook=0.01", "min_arm_users": 30})
    assert res.status_code == 200, res.text
    body = res.json()
    check_split(body, who, range(200), 30)
    assert body == report_for(rt, "promo", ReportRequest(costs={"webhook": COST},
                                                         min_arm_users=30))
    ranged = client.get("/api/v1/journeys/promo/report", headers=AUTH,
                        params={"to": "2026-10-01T12:00:00+00:00", "cost": "webhook=0.01",
                                "min_arm_users": 30}).json()
    check_split(ranged, who, FIRST, 30)
    bad = client.get("/api/v1/journeys/promo/report", headers=AUTH, params={"goal": "nope"})
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "goal"
    bad = client.get("/api/v1/journeys/promo/report", headers=AUTH,
                     params={"cost": "webhook=cheap"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "cost"
    assert client.get("/api/v1/journeys/nope/report", headers=AUTH).status_code == 404
    assert client.get("/api/v1/journeys/promo/report").status_code == 401
    world.close()  # the CLI opens the data directory itself

    journey_commands(cli)  # as main() does through the plugin hooks
    optimize_commands(cli)
    env = {"TOUCHLINE_ADMIN_TOKEN": TOKEN}
    out = CliRunner().invoke(cli, ["journey", "report", "promo", "--cost", "webhook=0.01",
                                   "--min-arm-users", "30", "--data", str(tmp_path)], env=env)
    assert out.exit_code == 0, out.output
    check_split(orjson.loads(out.output), who, range(200), 30)
    out = CliRunner().invoke(cli, ["journey", "report", "promo", "--table", "--cost",
                                   "webhook=0.01", "--data", str(tmp_path)], env=env)
    assert out.exit_code == 0, out.output
    assert "node split: split 'coupon_test', compared with 'control'" in out.output
    assert "control (control)" in out.output and "too few users" in out.output
    out = CliRunner().invoke(cli, ["journey", "report", "promo", "--goal", "nope",
                                   "--data", str(tmp_path)], env=env)
    assert out.exit_code != 0 and "goal" in out.output
