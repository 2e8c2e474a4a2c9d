"""The fast funnel against the brute-force reference on random events."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from touchline.analyze.engine import Analyzer
from touchline.analyze.source import DuckDBEventSource

from .conftest import make_conn
from .reference import Event, Match, by_user, funnel_counts, funnel_user

D = 86_400_000
EVENTS = ["a", "b", "c", "d", "x"]


def _canonical(conn: Any) -> list[Event]:
    rows = conn.execute(
        "SELECT user_id, epoch_ms(time), event, properties FROM events "
        "ORDER BY user_id, time, (hash(event_id) >> 1)::BIGINT").fetchall()
    return [(int(u), int(t), str(e), orjson.loads(p)) for u, t, e, p in rows]


def _matcher(step: dict[str, Any]) -> Match:
    where = step.get("where")
    if where is None:
        return lambda e: e[2] == step["event"]
    want = where[0]["value"]
    return lambda e: e[2] == step["event"] and e[3].get("p") == want


step_st = st.builds(
    lambda ev, flt: {"event": ev, **({"where": [{"property": "p", "op": "=", "value": flt}]}
                                    if flt is not None else {})},
    st.sampled_from(EVENTS[:4]), st.sampled_from([None, None, 0, 1]))

event_st = st.tuples(
    st.integers(1, 3),  # user
    st.sampled_from(EVENTS),
    st.integers(0, 12).map(lambda t: t * 1000),  # coarse times: many ties
    st.sampled_from([{"p": 0}, {"p": 1}]),
)


def _run(rows: list[Any], spec: dict[str, Any]) -> tuple[Analyzer, Any, dict[int, Any]]:
    conn = make_conn(rows)
    an = Analyzer(DuckDBEventSource(conn), time_zone="UTC")
    res = an.run("funnel", spec)
    return an, res, by_user(_canonical(conn))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(event_st, min_size=8, max_size=40),
    steps=st.lists(step_st, min_size=2, max_size=4),
    window_s=st.integers(1, 8),
    mode=st.sampled_from(["ordered", "strict"]),
    to_s=st.integers(1, 12),
)
def test_ordered_and_strict_match_reference(rows: list[Any], steps: list[dict[str, Any]],
                                            window_s: int, mode: str, to_s: int) -> None:
    # `to` is a whole day, so shift the range instead: events live in [0, 12s]; use a
    # window in seconds and the date range 1970-01-01..02 (step 1 anywhere in it).
    spec = {"from": "1970-01-01", "to": "1970-01-02", "steps": steps, "window": f"{window_s}s",
            "mode": mode}
    an, res, users = _run(rows, spec)
    matchers = [_matcher(s) for s in steps]
    ref = {u: funnel_user(evs, matchers, window_s * 1000, 0, D, mode=mode)
           for u, evs in users.items()}
    assert [s["users"] for s in res.to_json()["steps"]] == funnel_counts(ref, len(steps))
    # Per user: the step reached and the time to convert of the counted attempt.
    cache = res.cache
    from touchline.analyze import funnel as fmod
    run = fmod.compute(an.context(spec), fmod.parse(spec))
    for pos, uid in enumerate(cache.users):
        r = ref[int(uid)]
        assert int(run.k[pos]) == r.k, (uid, users[int(uid)])
        if r.k > 0:
            assert int(run.dur[r.k - 1, pos]) == r.dur, (uid, users[int(uid)])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(event_st, min_size=8, max_size=40),
    steps=st.lists(st.sampled_from(["a", "b", "c"]), min_size=2, max_size=3, unique=True),
    window_s=st.integers(1, 8),
    between=st.sampled_from([(1, 2), (1, 3), (2, 3)]),
)
def test_exclusions_match_reference(rows: list[Any], steps: list[str], window_s: int,
                                    between: tuple[int, int]) -> None:
    n = len(steps)
    a, b = between
    if b > n:
        a, b = 1, n
    spec = {"from": "1970-01-01", "to": "1970-01-02", "steps": steps, "window": f"{window_s}s",
            "exclusions": [{"event": "x", "between": [a, b]}]}
    _, res, users = _run(rows, spec)
    matchers = [(lambda e, s=s: e[2] == s) for s in steps]
    ex = [((lambda e: e[2] == "x"), a - 1, b - 1)]
    ref = {u: funnel_user(evs, matchers, window_s * 1000, 0, D, exclusions=ex)
           for u, evs in users.items()}
    out = res.to_json()
    assert [s["users"] for s in out["steps"]] == funnel_counts(ref, n)
    assert out["excluded_users"] == sum(1 for r in ref.values() if r.k < 0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(event_st, min_size=6, max_size=30),
    steps=st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4, unique=True),
    window_s=st.integers(1, 8),
)
def test_any_order_matches_reference(rows: list[Any], steps: list[str], window_s: int) -> None:
    spec = {"from": "1970-01-01", "to": "1970-01-02", "steps": steps, "window": f"{window_s}s",
            "mode": "any"}
    _, res, users = _run(rows, spec)
    matchers = [(lambda e, s=s: e[2] == s) for s in steps]
    ref = {u: funnel_user(evs, matchers, window_s * 1000, 0, D, mode="any")
           for u, evs in users.items()}
    assert [s["users"] for s in res.to_json()["steps"]] == funnel_counts(ref, len(steps))
