"""Events, distribution, interval, RFM, stages and transitions on hand-checked data, the
users behind their numbers, the incremental cache and spec validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from touchline.analyze.engine import KINDS, Analyzer
from touchline.analyze.source import DuckDBEventSource
from touchline.errors import InvalidInput, NotFound

from .conftest import insert_events, make_analyzer, make_conn

H = 3_600_000
D = 24 * H
RANGE = {"from": "1970-01-01", "to": "1970-01-11"}
ROWS: list[Any] = [
    (1, "pay", 0, {"amount": 10, "channel": "app"}),
    (1, "pay", 1 * D, {"amount": 30, "channel": "app"}),
    (1, "pay", 9 * D, {"amount": 60, "channel": "kiosk"}),
    (2, "pay", 2 * D, {"amount": 5, "channel": "kiosk"}),
    (2, "view", 2 * D - H, {"channel": "kiosk"}),
    (3, "view", 3 * D, {"channel": "app"}),
    (3, "view", 3 * D + 2 * H, {"channel": "app"}),
    (4, "pay", 8 * D, {"amount": 100, "channel": "app"}),
]
PROFILES = {1: {"group": "family"}, 2: {"group": "student"}, 3: {"group": "family"},
            4: {"group": "white_collar"}}


@pytest.fixture(scope="module")
def an() -> Analyzer:
    return make_analyzer(ROWS, PROFILES)


def test_events_measures_and_breakdown(an: Analyzer) -> None:
    res = an.run("events", {**RANGE, "interval": "total", "events": [
        {"event": "pay", "measure": "sum", "property": "amount"},
        {"event": "pay", "measure": "users"},
        {"event": "pay", "measure": "per_user"},
        {"event": "pay", "measure": "p50", "property": "amount"}]})
    totals = [s["total"] for s in res.to_json()["series"]]
    assert totals == [205.0, 3.0, round(5 / 3, 6), 30.0]
    by = an.run("events", {**RANGE, "interval": "day", "events": [{"event": "pay"}],
                           "breakdown": {"property": "user.group"}}).to_json()
    assert {s["breakdown"]: s["total"] for s in by["series"]} == {
        "family": 3.0, "student": 1.0, "white_collar": 1.0}
    res2 = an.run("events", {**RANGE, "events": ["pay"], "breakdown": {"property": "channel"}})
    assert list(res2.users("series:0:total/kiosk")) == [1, 2]
    day2 = next(s for s in res2.to_json()["series"] if s["breakdown"] == "app")["values"][1]
    assert day2["value"] == 1.0 and list(res2.users(day2["cell"])) == [1]


def test_filters_all_operators(an: Analyzer) -> None:
    def users(cond: dict[str, Any]) -> float:
        out = an.run("events", {**RANGE, "interval": "total", "where": [cond],
                                "events": [{"event": "pay", "measure": "count"}]}).to_json()
        return float(out["series"][0]["total"])

    assert users({"property": "amount", "op": ">", "value": 10}) == 3
    assert users({"property": "amount", "op": "<=", "value": 10}) == 2
    assert users({"property": "amount", "op": "=", "value": 30}) == 1
    assert users({"property": "channel", "op": "!=", "value": "app"}) == 2
    assert users({"property": "channel", "op": "in", "value": ["app", "web"]}) == 3
    assert users({"property": "channel", "op": "not in", "value": ["app"]}) == 2
    assert users({"property": "channel", "op": "contains", "value": "osk"}) == 2
    assert users({"property": "channel", "op": "regex", "value": "^a"}) == 3
    assert users({"property": "coupon", "op": "is not set"}) == 5
    assert users({"property": "coupon", "op": "is set"}) == 0
    assert users({"property": "user.group", "op": "=", "value": "family"}) == 3
    assert users({"or": [{"property": "amount", "op": ">=", "value": 100},
                         {"property": "amount", "op": "<", "value": 10}]}) == 2


def test_distribution_and_interval(an: Analyzer) -> None:
    res = an.run("distribution", {**RANGE, "event": "pay", "buckets": [1, 2, 3]})
    assert [b["users"] for b in res.to_json()["buckets"]] == [2, 0, 1]
    assert list(res.users("bucket:2")) == [1]
    iv = an.run("interval", {**RANGE, "start": "view", "end": "pay"}).to_json()
    assert iv["intervals"] == 1 and iv["percentiles_ms"]["p50"] == H
    each = an.run("interval", {**RANGE, "start": "pay", "end": "pay", "mode": "each"}).to_json()
    assert each["intervals"] == 2 and each["percentiles_ms"]["p50"] == 4.5 * D


def test_rfm_thresholds_layers_and_cells(an: Analyzer) -> None:
    spec = {**RANGE, "event": "pay", "monetary": "amount", "scoring": "thresholds",
            "thresholds": {"r": [2, 5], "f": [2, 3], "m": [20, 80]},
            "layers": [{"name": "best", "r": 3, "f": 3}, {"name": "lapsed", "r": 1}]}
    res = an.run("rfm", spec)
    layers = {x["layer"]: x["users"] for x in res.to_json()["layers"]}
    assert layers == {"best": 1, "lapsed": 1, "others": 1}
    assert list(res.users("layer:best")) == [1]
    assert list(res.users("layer:lapsed")) == [2]
    frame = res.frame("users").set_index("user_id")
    assert frame.loc[1, "monetary"] == 100 and frame.loc[4, "r"] == 3  # 2 days <= the first threshold
    q = an.run("rfm", {**RANGE, "event": "pay", "monetary": "amount"}).to_json()
    assert q["users"] == 3 and sum(x["users"] for x in q["layers"]) == 3


def test_stages_and_transitions(an: Analyzer) -> None:
    spec = {**RANGE, "as_of": "1970-01-06",
            "metrics": {"orders": {"event": "pay", "agg": "count"}},
            "stages": [{"name": "silent", "when": [{"metric": "days_since_last_seen",
                                                    "op": ">", "value": 3}]},
                       {"name": "buyer", "when": [{"metric": "orders", "op": ">=",
                                                   "value": 1}]},
                       {"name": "browser", "when": [{"metric": "orders", "op": "=",
                                                     "value": 0}]}]}
    res = an.run("lifecycle_stages", spec)
    got = {s["stage"]: s["users"] for s in res.to_json()["stages"]}
    assert got == {"silent": 1, "buyer": 1, "browser": 1, "other": 0}
    assert list(res.users("stage:silent")) == [1]
    model = {k: v for k, v in spec.items() if k in ("metrics", "stages")}
    tr = an.run("transitions", {**RANGE, "dates": ["1970-01-06", "1970-01-11"],
                                "model": {"kind": "lifecycle_stages", **model}})
    cells = {(c["from"], c["to"]): c["users"] for c in tr.to_json()["cells"]}
    assert cells == {("silent", "buyer"): 1, ("buyer", "silent"): 1,
                     ("browser", "silent"): 1, ("(none)", "buyer"): 1}
    assert list(tr.users("cell:(none):buyer")) == [4]


def test_unknown_cells_and_kinds(an: Analyzer) -> None:
    res = an.run("funnel", {**RANGE, "steps": ["view", "pay"]})
    with pytest.raises(NotFound):
        res.users("step:9")
    with pytest.raises(InvalidInput) as err:
        an.run("nope", RANGE)
    assert err.value.field == "kind"
    page = an.users("funnel", {**RANGE, "steps": ["view", "pay"]}, "step:1", limit=1,
                    profile_properties=["group"])
    assert page["total"] == 2 and page["users"] == [{"user_id": 2, "group": "student"}]
    assert page["next_offset"] == 1


def test_cache_refreshes_incrementally() -> None:
    conn = make_conn([(1, "a", 0, {"p": "x"}), (2, "a", H)])
    an = Analyzer(DuckDBEventSource(conn), time_zone="UTC", refresh_interval_ms=0)
    spec = {**RANGE, "events": [{"event": "a", "measure": "users"}], "interval": "total",
            "where": [{"property": "p", "op": "=", "value": "x"}]}
    assert an.run("events", spec).to_json()["series"][0]["total"] == 1
    cache = an.caches.get("default")
    insert_events(conn, [(3, "a", 2 * H, {"p": "x"}), (0, "a", 3 * H, {"p": "x"})],
                  received_ms=10 * D, start_id=100)
    assert an.run("events", spec).to_json()["series"][0]["total"] == 3
    live = an.caches.get("default")
    assert list(live.users) == [0, 1, 2, 3] and live.stamp == (10 * D, 4, 0)
    assert list(cache.users) == [1, 2]  # a snapshot taken before stays as it was


spec_st = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5),
              st.sampled_from(["a", "7d", "1970-01-01", "day", "pay", "=", "channel"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(
                                ["steps", "event", "where", "window", "mode", "property", "op",
                                 "value", "start", "return", "periods", "breakdown", "events",
                                 "dates", "model", "kind", "buckets", "stages", "metrics"]),
                                inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(KINDS)), body=st.dictionaries(
    st.sampled_from(["steps", "event", "where", "window", "start", "return", "events", "dates",
                     "model", "buckets", "stages", "metrics", "breakdown", "mode", "periods"]),
    spec_st, max_size=5))
def test_random_specs_fail_only_with_invalid_input(an: Analyzer, kind: str,
                                                   body: dict[str, Any]) -> None:
    try:
        an.run(kind, {**RANGE, **body})
    except (InvalidInput, NotFound):
        pass


def test_cache_reloads_when_identities_merge() -> None:
    conn = make_conn([(1, "a", 0), (2, "b", H)], {1: {}, 2: {}})
    an = Analyzer(DuckDBEventSource(conn), time_zone="UTC", refresh_interval_ms=0)
    spec = {**RANGE, "steps": ["a", "b"]}
    assert [s["users"] for s in an.run("funnel", spec).to_json()["steps"]] == [1, 0]
    # Profile 2 is merged into 1: its events move over without any new event arriving.
    conn.execute("UPDATE events SET user_id = 1 WHERE user_id = 2")
    conn.execute("DELETE FROM profiles WHERE user_id = 2")
    assert [s["users"] for s in an.run("funnel", spec).to_json()["steps"]] == [1, 1]


def test_retention_and_lifecycle_split_by_profile(an: Analyzer) -> None:
    res = an.run("retention", {**RANGE, "start": "pay", "return": "pay", "periods": 9,
                               "breakdown": {"property": "user.group"}})
    by = {b["value"]: b for b in res.to_json()["breakdown"]}
    assert by["family"]["users"] == 1 and by["student"]["users"] == 1
    first = by["family"]["cohorts"][0]
    assert first["retained"][1] == 1 and first["retained"][9] == 1  # user 1: days 1 and 9
    assert list(res.users(first["cells"][1])) == [1]
    life = an.run("lifecycle", {**RANGE, "period": "day",
                                "breakdown": {"property": "user.group"}}).to_json()
    fam = next(b for b in life["breakdown"] if b["value"] == "family")
    assert [p["new"] for p in fam["periods"]][:4] == [1, 0, 0, 1]
    # An event property is read on the user's first start event in the range (user 1's
    # first pay is on the app, user 2's at the kiosk).
    ch = an.run("retention", {**RANGE, "start": "pay", "return": "pay", "periods": 9,
                              "breakdown": {"property": "channel"}})
    by_ch = {b["value"]: b["users"] for b in ch.to_json()["breakdown"]}
    assert by_ch == {"app": 2, "kiosk": 1}
    assert list(ch.users("cohort:1970-01-01/app")) == [1]
    with pytest.raises(InvalidInput) as err:
        an.run("retention", {**RANGE, "start": "pay",
                             "breakdown": {"property": "channel", "attribution": "step"}})
    assert err.value.field == "breakdown.attribution"


def test_arrow_source_matches_duckdb_source() -> None:
    import pyarrow as pa

    from touchline.analyze.source import ArrowEventSource

    rows = [(2, "b", 5), (1, "a", 0), (1, "b", 3), (2, "a", 1)]
    table = pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()),
                      "time": pa.array([r[1 + 1] for r in rows], pa.int64()),
                      "event": [r[1] for r in rows]})
    profiles = pa.table({"user_id": pa.array([1, 2], pa.int64()), "group": ["x", "y"]})
    arrow = Analyzer(ArrowEventSource(table, profiles), time_zone="UTC")
    duck = make_analyzer(rows, {1: {"group": "x"}, 2: {"group": "y"}})
    spec = {**RANGE, "steps": ["a", "b"], "breakdown": {"property": "user.group"}}
    assert arrow.run("funnel", spec).to_json() == duck.run("funnel", spec).to_json()
