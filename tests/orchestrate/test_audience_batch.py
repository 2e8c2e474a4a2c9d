"""The SQL compiler against a plain Python reference, on random data and definitions."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_audience_support import Event, EventDB, ref_member

from touchline.orchestrate.audience_eval import (
    is_member,
    load_users_sql,
    next_boundary,
    rows_by_user,
)
from touchline.orchestrate.audience_model import parse_condition
from touchline.orchestrate.audience_sql import (
    boundary_sql,
    bucket_of,
    count_sql,
    expand,
    membership_sql,
    sample_sql,
)

HOUR = 3_600_000
DAY = 24 * HOUR
CITIES = ["SH", "BJ", "GZ", "S"]
EVENTS = ["order", "view"]


class Segments:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def segment(self, name: str) -> Any:
        return self.defs[name]

    def layer(self, layer: Any) -> frozenset[int]:
        raise AssertionError("no layers in this test")


profile_values = st.fixed_dictionaries({}, optional={
    "city": st.sampled_from(CITIES),
    "age": st.integers(0, 80) | st.sampled_from(["30", None]),
    "vip": st.booleans(),
    "tags": st.lists(st.sampled_from(["a", "b", "c", 1]), max_size=3) | st.just("abc"),
})
event_props = st.fixed_dictionaries({}, optional={
    "amount": st.integers(0, 500) | st.just("100"),
    "channel": st.sampled_from(["app", "sms", "wechat"]),
})
# Whole hours, so that event times often fall exactly on window edges.
times = st.integers(0, 30).map(lambda h: h * HOUR)
durations = st.sampled_from(["1h", "2h", "6h", "1d"])


def prop_test(key: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda v, op: {key: "city", "op": op, "value": v},
                  st.sampled_from(CITIES), st.sampled_from(["=", "!=", ">", "<="])),
        st.builds(lambda v, op: {key: "age", "op": op, "value": v},
                  st.integers(0, 80), st.sampled_from(["=", "!=", ">", ">=", "<", "<="])),
        st.builds(lambda v: {key: "vip", "op": "=", "value": v}, st.booleans()),
        st.builds(lambda v, op: {key: "city", "op": op, "value": v},
                  st.lists(st.sampled_from(CITIES), min_size=1, max_size=2),
                  st.sampled_from(["in", "not_in"])),
        st.builds(lambda v, op: {key: "tags", "op": op, "value": v},
                  st.sampled_from(["a", "b", "bc"]), st.sampled_from(["contains", "not_contains"])),
        st.builds(lambda p, op: {key: p, "op": op},
                  st.sampled_from(["age", "tags", "amount", "channel"]),
                  st.sampled_from(["is_set", "not_set"])),
        st.builds(lambda v, op: {key: "amount", "op": op, "value": v},
                  st.integers(0, 500), st.sampled_from([">", "<="])),
        st.builds(lambda v: {key: "channel", "op": "=", "value": v},
                  st.sampled_from(["app", "sms"])),
    )


def window() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.just({}),
        st.builds(lambda d: {"within": d}, durations),
        st.builds(lambda a, b: {"from": min(a, b), "to": max(a, b) + 1}, times, times),
    )


def performed() -> st.SearchStrategy[dict[str, Any]]:
    def build(ev: str, where: list[Any], agg: Any, op: str, v: int, w: dict[str, Any]) -> Any:
        value: Any = [v, v + 150] if op == "between" else v
        return {"performed": ev, "where": where, "aggregate": agg, "op": op, "value": value, **w}

    return st.builds(
        build, st.sampled_from(EVENTS), st.lists(prop_test("property"), max_size=1),
        st.sampled_from(["count", {"sum": "amount"}, {"avg": "amount"}, {"max": "amount"},
                         {"min": "amount"}]),
        st.sampled_from(["=", "!=", ">=", "<=", ">", "<", "between"]), st.integers(0, 3) | st.integers(0, 400),
        window(),
    )


def leaf() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda t: {"trait": t["p"], **{k: v for k, v in t.items() if k != "p"}},
                  prop_test("p")),
        performed(),
        st.builds(lambda ev, w: {"not_performed": ev, **w}, st.sampled_from(EVENTS), window()),
        st.builds(
            lambda which, ev, when: {f"{which}_performed": ev, **when},
            st.sampled_from(["first", "last"]), st.sampled_from(EVENTS),
            st.one_of(st.builds(lambda d: {"within": d}, durations),
                      st.builds(lambda d: {"more_than": d}, durations),
                      st.builds(lambda t: {"before": t}, times),
                      st.builds(lambda t: {"after": t}, times)),
        ),
        st.builds(lambda a, n, s: {"bucket": [a, min(100, a + n)], "salt": s},
                  st.integers(0, 99), st.integers(1, 60), st.sampled_from(["", "x"])),
        st.just({"in_segment": "base"}),
    )


conditions = st.recursive(
    leaf(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=5,
)

BASE = parse_condition({"any": [{"trait": "vip", "value": True},
                                {"performed": "view", "op": ">=", "value": 2, "within": "1d"}]})


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[int, dict[str, Any]], list[Event], int]:
    users = draw(st.lists(st.integers(-5, 40), min_size=1, max_size=8, unique=True))
    profiles = {u: {k: v for k, v in draw(profile_values).items() if v is not None} for u in users}
    events = draw(st.lists(
        st.tuples(st.sampled_from(users), st.sampled_from(EVENTS), times, event_props),
        max_size=25,
    ))
    return profiles, events, draw(times)


def load(profiles: dict[int, dict[str, Any]], events: list[Event]) -> EventDB:
    db = EventDB()
    for u, props in profiles.items():
        db.add_profile(u, props)
    for u, ev, t, props in events:
        db.add_event(u, ev, t, props)
    return db


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), conditions)
def test_batch_membership_matches_reference(world: Any, definition: dict[str, Any]) -> None:
    profiles, events, at = world
    cond = parse_condition(definition)
    db = load(profiles, events)
    resolved = expand(cond, Segments({"base": BASE}))
    got = sorted(r[0] for r in db.rows("p", membership_sql(resolved, at)))
    want = sorted(u for u, props in profiles.items()
                  if ref_member(cond, u, props, events, at, {"base": BASE}))
    assert got == want
    assert db.rows("p", count_sql(resolved, at)) == [(len(want),)]
    assert [r[0] for r in db.rows("p", sample_sql(resolved, at, 3))] == want[:3]
    some = list(profiles)[:2]
    got_some = sorted(r[0] for r in db.rows("p", membership_sql(resolved, at, some)))
    assert got_some == sorted(u for u in want if u in some)

    # The real-time evaluator agrees with the SQL, memberships and boundaries alike.
    users = sorted({*profiles, *(e[0] for e in events), 99})
    data = rows_by_user(*db.rows_many("p", list(load_users_sql(users))))
    assert sorted(u for u, rows in data.items() if is_member(resolved, u, rows, at)) == want
    sql = boundary_sql(resolved, at)
    due = dict(db.rows("p", sql)) if sql else {}
    assert {u: b for u, rows in data.items()
            if (b := next_boundary(resolved, rows, at)) is not None} == due


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), conditions)
def test_membership_changes_only_at_boundaries(world: Any, definition: dict[str, Any]) -> None:
    """Between ``at`` and the next boundary nothing changes; at it, it may."""
    profiles, events, at = world
    cond = parse_condition(definition)
    resolved = expand(cond, Segments({"base": BASE}))
    db = load(profiles, events)
    sql = boundary_sql(resolved, at)
    due = dict(db.rows("p", sql)) if sql else {}
    probe_times = sorted({at, *[t for _, _, t, _ in events], *[t + d for _, _, t, _ in events
                          for d in (HOUR, 2 * HOUR, 6 * HOUR, DAY)]})
    for u, props in profiles.items():
        before = ref_member(cond, u, props, events, at, {"base": BASE})
        until = due.get(u)
        for t in probe_times:
            if t <= at or (until is not None and t >= until):
                continue
            assert ref_member(cond, u, props, events, t, {"base": BASE}) == before, (u, t, until)
            assert ref_member(cond, u, props, events, t - 1, {"base": BASE}) == before


def test_bucket_is_stable_and_even() -> None:
    counts = [0] * 100
    for u in range(100_000):
        counts[bucket_of(u, "exp")] += 1
    assert min(counts) > 900 and max(counts) < 1100
    assert bucket_of(12345, "exp") == bucket_of(12345, "exp")
    same = sum(bucket_of(u, "a") < 50 and bucket_of(u, "b") < 50 for u in range(10_000))
    assert 2000 < same < 3000  # independent salts: about a quarter in both halves


EDGES = [
    # (definition, event hour, hours at which the user is a member, out of 0..12)
    ({"performed": "order", "within": "2h"}, 5, {5, 6}),
    ({"not_performed": "order", "within": "2h"}, 5, {0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12}),
    ({"performed": "order", "from": 5 * HOUR, "to": 6 * HOUR}, 5, set(range(5, 13))),
    ({"performed": "order", "from": 6 * HOUR}, 5, set()),
    ({"performed": "order", "to": 5 * HOUR}, 5, set()),
    ({"first_performed": "order", "within": "3h"}, 5, {5, 6, 7}),
    ({"last_performed": "order", "more_than": "3h"}, 5, {8, 9, 10, 11, 12}),
    ({"last_performed": "order", "before": 5 * HOUR}, 5, set()),
    ({"last_performed": "order", "after": 5 * HOUR}, 5, set(range(5, 13))),
]


def test_window_edges_are_exact() -> None:
    for definition, hour, member_hours in EDGES:
        db = load({1: {}}, [(1, "order", hour * HOUR, {})])
        resolved = expand(parse_condition(definition), Segments({}))
        got = {h for h in range(13)
               if db.rows("p", membership_sql(resolved, h * HOUR)) == [(1,)]}
        assert got == member_hours, definition
        just_before = {h for h in range(1, 13)
                       if db.rows("p", membership_sql(resolved, h * HOUR - 1)) == [(1,)]}
        assert just_before == {h + 1 for h in member_hours if h < 12}, definition
        data = rows_by_user(*db.rows_many("p", list(load_users_sql([1]))))[1]
        assert {h for h in range(13) if is_member(resolved, 1, data, h * HOUR)} == member_hours
        assert {h for h in range(1, 13) if is_member(resolved, 1, data, h * HOUR - 1)} == \
            just_before
