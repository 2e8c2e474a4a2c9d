"""Retention, lifecycle and paths against the plain reference on random events."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from touchline.analyze.engine import Analyzer
from touchline.analyze.source import DuckDBEventSource

from . import reference as ref
from .conftest import make_conn
from .test_funnel_reference import _canonical

D = 86_400_000
M = 60_000

rows_st = st.lists(st.tuples(st.integers(1, 5), st.sampled_from(["a", "b", "c"]),
                             st.integers(-2 * 24, 10 * 24).map(lambda h: h * 3_600_000)),
                   min_size=5, max_size=60)
CFG = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _an(rows: list[Any]) -> tuple[Analyzer, list[ref.Event]]:
    conn = make_conn(rows)
    return Analyzer(DuckDBEventSource(conn), time_zone="UTC"), _canonical(conn)


@CFG
@given(rows=rows_st, first_time=st.booleans(), on_or_after=st.booleans(),
       periods=st.integers(1, 5))
def test_retention_matches_reference(rows: list[Any], first_time: bool, on_or_after: bool,
                                     periods: int) -> None:
    an, evs = _an(rows)
    out = an.run("retention", {
        "from": "1970-01-01", "to": "1970-01-06", "start": {"event": "a"},
        "return": {"event": "b"}, "periods": periods,
        "start_mode": "first_time" if first_time else "recurring",
        "retention": "on_or_after" if on_or_after else "on"}).to_json()
    want = ref.retention(evs, "a", "b", 0, 5, periods, first_time=first_time,
                         on_or_after=on_or_after)
    assert [c["retained"] for c in out["cohorts"]] == [want[c] for c in range(5)]


@CFG
@given(rows=rows_st)
def test_lifecycle_matches_reference(rows: list[Any]) -> None:
    an, evs = _an(rows)
    out = an.run("lifecycle", {"from": "1970-01-01", "to": "1970-01-08",
                               "period": "day"}).to_json()
    got = [[p["new"], p["returning"], p["resurrecting"], p["dormant"]] for p in out["periods"]]
    # Days before the range still decide "new" versus "resurrecting".
    want = ref.lifecycle(evs, 0, 7)
    assert got == want


@CFG
@given(rows=st.lists(st.tuples(st.integers(1, 4), st.sampled_from(["a", "b", "c", "d"]),
                               st.integers(0, 300).map(lambda m: m * M)),
                     min_size=3, max_size=60),
       steps=st.integers(2, 5))
def test_paths_match_reference(rows: list[Any], steps: int) -> None:
    an, evs = _an(rows)
    out = an.run("paths", {"from": "1970-01-01", "to": "1970-01-02", "start": {"event": "a"},
                           "steps": steps, "top": 1000}).to_json()
    got = {tuple(p["path"]): p["count"] for p in out["top_paths"]}
    assert got == ref.paths_from(evs, "a", steps, 30 * M, 0, D)
    # Edges are consistent with the paths.
    total = sum(e["value"] for e in out["edges"])
    assert total == sum(c * (len(p) - 1) for p, c in got.items())
