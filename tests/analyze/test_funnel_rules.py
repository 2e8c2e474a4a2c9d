"""One test per funnel rule of analysis-semantics.md, with the scenarios it lists."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from touchline.errors import InvalidInput

from .conftest import make_analyzer

S = 1000
H = 3600 * S
D = 24 * H
RANGE = {"from": "1970-01-01", "to": "1970-01-03"}


def counts(rows: list[Any], steps: list[Any], tz: str = "UTC", **spec: Any) -> list[int]:
    an = make_analyzer(rows, tz=tz)
    out = an.run("funnel", {**RANGE, "steps": steps, **spec}).to_json()
    return [s["users"] for s in out["steps"]]


def test_ordered_needs_time_order() -> None:
    rows = [(1, "a", 0), (1, "b", 10 * S), (2, "b", 0), (2, "a", 10 * S)]
    assert counts(rows, ["a", "b"]) == [2, 1]


def test_window_bound_is_inclusive() -> None:
    rows = [(1, "a", 0), (1, "b", H), (2, "a", 0), (2, "b", H + 1)]
    assert counts(rows, ["a", "b"], window="1h") == [2, 1]


def test_window_is_absolute_across_a_dst_change() -> None:
    ny = ZoneInfo("America/New_York")
    # 2026-11-01 02:00 EDT falls back to 01:00 EST: the local day is 25 hours long.
    start = int(datetime(2026, 10, 31, 12, 0, tzinfo=ny).timestamp() * 1000)
    rows = [
        (1, "a", start), (1, "b", start + 24 * H),  # exactly 24h later: in a 1d window
        (2, "a", start), (2, "b", start + 24 * H + 30 * 60 * S),  # same wall clock + 30m
    ]
    an = make_analyzer(rows, tz="America/New_York")
    out = an.run("funnel", {"from": "2026-10-31", "to": "2026-11-02", "steps": ["a", "b"],
                            "window": "1d"}).to_json()
    assert [s["users"] for s in out["steps"]] == [2, 1]
    # The local date range follows the zone: 2026-11-02 starts at 05:00 UTC (EST).
    late = int(datetime(2026, 11, 2, 0, 30, tzinfo=ny).timestamp() * 1000)
    an = make_analyzer([(3, "a", late - H), (4, "a", late)], tz="America/New_York")
    out = an.run("funnel", {"from": "2026-11-01", "to": "2026-11-02", "steps": ["a"]}).to_json()
    assert out["steps"][0]["users"] == 1


def test_furthest_attempt_counts() -> None:
    # First attempt gets to b only; a later one gets to c.
    rows = [(1, "a", 0), (1, "b", S), (1, "a", 10 * H), (1, "b", 11 * H), (1, "c", 12 * H)]
    assert counts(rows, ["a", "b", "c"], window="3h") == [1, 1, 1]


def test_repeated_steps_need_separate_events() -> None:
    one = [(1, "signup", 0)]
    two = [(1, "signup", 0), (1, "signup", S)]
    assert counts(one, ["signup", "signup"]) == [1, 0]
    assert counts(two, ["signup", "signup"]) == [1, 1]
    assert counts([(1, "a", 0), (1, "b", S), (1, "a", 2 * S)], ["a", "b", "a"]) == [1, 1, 1]


def test_same_timestamp_counts_as_in_order() -> None:
    assert counts([(1, "b", 5 * S), (1, "a", 5 * S)], ["a", "b"]) == [1, 1]


def test_twenty_identical_first_steps_are_one_conversion() -> None:
    rows = [(1, "a", i * S) for i in range(20)] + [(1, "b", 30 * S)]
    an = make_analyzer(rows)
    out = an.run("funnel", {**RANGE, "steps": ["a", "b"]}).to_json()
    assert [s["users"] for s in out["steps"]] == [1, 1]
    # Latest entry wins for timing: from the last `a` (19 s) to `b` (30 s).
    assert out["steps"][1]["median_time_to_convert_ms"] == 11 * S


def test_time_to_convert_from_latest_attempt_that_got_furthest() -> None:
    rows = [(1, "a", 0), (1, "a", 10 * S), (1, "b", 15 * S), (1, "c", 20 * S),
            (1, "a", 30 * S), (1, "b", 40 * S)]
    an = make_analyzer(rows)
    out = an.run("funnel", {**RANGE, "steps": ["a", "b", "c"]}).to_json()
    assert out["steps"][2]["median_time_to_convert_ms"] == 10 * S  # 10 s -> 20 s


def test_date_range_applies_to_the_first_step_only() -> None:
    rows = [(1, "a", 2 * D - H), (1, "b", 2 * D + H),  # b after `to`, inside the window
            (2, "a", 2 * D + H), (2, "b", 2 * D + 2 * H),  # a after `to`
            (3, "a", -H), (3, "b", H)]  # a before `from`
    assert counts(rows, ["a", "b"], window="1d") == [1, 1]


def test_strict_order_breaks_on_other_events() -> None:
    rows = [(1, "a", 0), (1, "x", S), (1, "b", 2 * S), (2, "a", 0), (2, "b", S)]
    assert counts(rows, ["a", "b"], mode="strict") == [2, 1]
    assert counts(rows, ["a", "b"]) == [2, 2]


def test_any_order() -> None:
    rows = [(1, "b", 0), (1, "a", S), (2, "a", 0), (2, "c", S)]
    assert counts(rows, ["a", "b"], mode="any") == [2, 1]


def test_exclusion_with_and_without_a_later_step() -> None:
    ex = [{"event": "cancel", "between": [1, 2]}]
    with_later = [(1, "a", 0), (1, "cancel", S), (1, "b", 2 * S)]
    without_later = [(2, "a", 0), (2, "cancel", S)]
    out_of_order = [(3, "cancel", 0), (3, "a", S), (3, "b", 2 * S)]
    an = make_analyzer(with_later + without_later + out_of_order)
    res = an.run("funnel", {**RANGE, "steps": ["a", "b"], "exclusions": ex}).to_json()
    # User 1's furthest attempt is disqualified: out of the funnel altogether.
    assert [s["users"] for s in res["steps"]] == [2, 1]
    assert res["excluded_users"] == 1
    assert list(an.run("funnel", {**RANGE, "steps": ["a", "b"], "exclusions": ex}).users(
        "step:1")) == [2, 3]


def test_clean_attempt_wins_over_a_disqualified_one() -> None:
    rows = [(1, "a", 0), (1, "cancel", S), (1, "b", 2 * S), (1, "a", 3 * S), (1, "b", 4 * S)]
    ex = [{"event": "cancel", "between": [1, 2]}]
    assert counts(rows, ["a", "b"], exclusions=ex) == [1, 1]


def test_hold_property_constant() -> None:
    rows = [(1, "order", 0, {"order_id": "A"}), (1, "pay", S, {"order_id": "B"}),
            (2, "order", 0, {"order_id": "A"}), (2, "pay", S, {"order_id": "A"})]
    assert counts(rows, ["order", "pay"], hold="order_id") == [2, 1]
    assert counts(rows, ["order", "pay"]) == [2, 2]


def test_step_filters_and_global_filters() -> None:
    rows = [(1, "a", 0, {"c": "app"}), (1, "b", S, {"c": "app"}),
            (2, "a", 0, {"c": "kiosk"}), (2, "b", S, {"c": "app"}),
            (3, "a", 0, {"c": "app"}), (3, "b", S, {"c": "kiosk"})]
    step_b = {"event": "b", "where": [{"property": "c", "op": "=", "value": "app"}]}
    assert counts(rows, ["a", step_b]) == [3, 2]
    assert counts(rows, ["a", "b"], where=[{"property": "c", "op": "=", "value": "app"}]) == [
        2, 1]


def test_breakdown_attribution() -> None:
    rows = [(1, "a", 0, {"c": "app"}), (1, "b", S, {"c": "kiosk"}),
            (2, "a", 0, {"c": "kiosk"})]
    an = make_analyzer(rows)

    def split(attr: str) -> dict[str, list[int]]:
        out = an.run("funnel", {**RANGE, "steps": ["a", "b"],
                                "breakdown": {"property": "c", "attribution": attr,
                                              "step": 2}}).to_json()
        return {p["value"]: [s["users"] for s in p["steps"]] for p in out["breakdown"]}

    assert split("first") == {"app": [1, 1], "kiosk": [1, 0]}
    assert split("last") == {"kiosk": [2, 1]}
    assert split("step") == {"kiosk": [1, 1], "(none)": [1, 0]}


def test_twenty_steps_and_users_behind_numbers() -> None:
    steps = [f"s{i}" for i in range(20)]
    rows = [(1, s, i * S) for i, s in enumerate(steps)] + [(2, "s0", 0), (2, "s1", S)]
    an = make_analyzer(rows)
    res = an.run("funnel", {**RANGE, "steps": steps})
    got = [s["users"] for s in res.to_json()["steps"]]
    assert got == [2, 2] + [1] * 18
    assert list(res.users("dropoff:2")) == [2]
    assert list(res.users("step:20")) == [1]


def test_trend_and_time_to_convert() -> None:
    rows = [(1, "a", 0), (1, "b", 30 * S), (2, "a", D), (2, "b", D + 2 * H), (3, "a", D)]
    res = make_analyzer(rows).run("funnel", {**RANGE, "steps": ["a", "b"], "trend": "day"})
    out = res.to_json()
    assert [(t["entered"], t["converted"]) for t in out["trend"]] == [(1, 1), (2, 1)]
    ttc = {b["from_ms"]: b["users"] for b in out["time_to_convert"]}
    assert ttc[0] == 1 and ttc[H] == 1
    assert list(res.users("trend:1970-01-02")) == [2, 3]


@pytest.mark.parametrize(("spec", "field"), [
    ({"steps": []}, "steps"),
    ({"steps": ["a"], "window": "7x"}, "window"),
    ({"steps": ["a"], "mode": "random"}, "mode"),
    ({"steps": ["a", "b"], "exclusions": [{"event": "x", "between": [2, 1]}]},
     "exclusions[0].between"),
    ({"steps": [{"event": "a", "where": [{"property": "p", "op": "~"}]}]}, "steps[0].where[0].op"),
    ({"steps": ["a"], "from": "yesterday"}, "from"),
])
def test_bad_specs_name_field_and_rule(spec: dict[str, Any], field: str) -> None:
    an = make_analyzer([(1, "a", 0)])
    with pytest.raises(InvalidInput) as err:
        an.run("funnel", {**RANGE, **spec})
    assert err.value.field == field
    assert err.value.rule
