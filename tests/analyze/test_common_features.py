"""What every analysis shares (issue 3): filters with every operator and and/or nesting,
the time zone, breakdowns by event property, profile property and segment, and every
number opening as its users. Each test runs over all ten kinds.

The oracles are other runs of the engine on data prepared by plain Python: a filtered
run must equal a run over the events the filter keeps (chosen by ``reference.
filter_holds``), a run in UTC+8 must equal a run in UTC over events shifted by 8 hours,
and each breakdown part must equal a run over only the users the part names (chosen by
``reference.deciding_value`` for event properties).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from touchline.analyze.engine import KINDS, Analyzer

from . import reference as ref
from .cells import numbers, strip_suffix, user_counts_without_cells
from .conftest import make_analyzer, make_conn
from .test_funnel_reference import _canonical

M = 60_000
H = 60 * M
D = 24 * H
RANGE = {"from": "1970-01-01", "to": "1970-01-09"}
END = 8 * D
AS_OF = 6 * D  # lifecycle_stages' as_of, 1970-01-07
D2 = 8 * D  # the later transitions date
SEGMENTS = {"vip": [1, 3, 5, 7, 9, 11, 13], "new": [2, 3, 4, 100]}

STAGES = {
    "metrics": {"orders": {"event": "pay", "agg": "count"},
                "spent": {"event": "pay", "agg": "sum", "property": "amount"}},
    "stages": [{"name": "silent", "when": [{"metric": "days_since_last_seen", "op": ">",
                                             "value": 3}]},
               {"name": "big", "when": [{"metric": "spent", "op": ">=", "value": 100}]},
               {"name": "buyer", "when": [{"metric": "orders", "op": ">=", "value": 1}]},
               {"name": "browser", "when": [{"metric": "events", "op": ">=", "value": 1}]}],
}
RFM_THRESHOLDS = {"event": "pay", "monetary": "amount", "scoring": "thresholds",
                  "thresholds": {"r": [2, 5], "f": [1, 2], "m": [20, 100]},
                  "layers": [{"name": "best", "r": 3, "f": [2, 3]},
                             {"name": "lapsed", "r": 1}]}

# One spec per case; every case runs with RANGE. Scores here do not depend on who else
# is scored (thresholds), so a part of a breakdown can be checked by a run over only
# its users; quantile RFM is checked separately.
SPECS: dict[str, dict[str, Any]] = {
    "events": {"interval": "day", "events": [{"event": "pay", "measure": "users"},
                                             {"event": "view", "measure": "users"}]},
    "funnel": {"steps": ["view", "add", "pay"], "window": "3d", "trend": "day"},
    "funnel_strict": {"steps": ["view", "pay"], "window": "1d", "mode": "strict"},
    "funnel_any": {"steps": ["pay", "view"], "window": "2d", "mode": "any", "trend": "day"},
    "funnel_held": {"steps": ["view", "pay"], "window": "2d", "hold": "channel", "trend": "day",
                    "exclusions": [{"event": "share", "between": [1, 2]}]},
    "retention": {"start": "view", "return": "pay", "periods": 5},
    "paths": {"start": "view", "steps": 4, "top": 1000},
    "paths_end": {"end": "pay", "steps": 3, "top": 1000, "session_gap": "2h"},
    "lifecycle": {"period": "day"},
    "distribution": {"event": "pay", "buckets": [1, 2, 3]},
    "interval": {"start": "view", "end": "pay"},
    "rfm": RFM_THRESHOLDS,
    "lifecycle_stages": {"as_of": "1970-01-07", **STAGES},
    "transitions": {"dates": ["1970-01-04", "1970-01-09"],
                    "model": {"kind": "lifecycle_stages", **STAGES}},
    "transitions_rfm": {"dates": ["1970-01-05", "1970-01-09"],
                        "model": {"kind": "rfm", "lookback": "5d", **RFM_THRESHOLDS}},
}
CASES = sorted(SPECS)


def kind_of(case: str) -> str:
    return case if case in KINDS else case.rsplit("_", 1)[0]


def in_range(e: ref.Event) -> bool:
    return 0 <= e[1] < END


# Per case, the events an event-property breakdown reads its value from (the analysis'
# own starting events, as docs/analysis.md states for each kind).
STARTS: dict[str, ref.Match] = {
    "retention": lambda e: e[2] == "view" and in_range(e),
    "paths": lambda e: e[2] == "view" and in_range(e),
    "paths_end": lambda e: e[2] == "pay" and in_range(e),
    "lifecycle": in_range,
    "distribution": lambda e: e[2] == "pay" and in_range(e),
    "interval": lambda e: e[2] == "view" and in_range(e),
    "rfm": lambda e: e[2] == "pay" and in_range(e),
    "lifecycle_stages": lambda e: e[1] < AS_OF,
    "transitions": lambda e: e[1] < D2,
    "transitions_rfm": lambda e: e[1] < D2,
}


def dataset(seed: int) -> tuple[list[Any], dict[int, dict[str, Any]]]:
    """Users with a few events from two days before the range to two days after, with
    ties, missing properties and users without a profile."""
    rng = random.Random(seed)
    rows: list[Any] = []
    for u in range(1, 16):
        for _ in range(rng.randint(0, 12)):
            ev = rng.choice(["view", "view", "add", "pay", "pay", "share"])
            t = rng.randint(-2 * 24, 10 * 24) * H + rng.choice([0, 0, 5, 30]) * M
            props: dict[str, Any] = {}
            if rng.random() < 0.8:
                props["channel"] = rng.choice(["app", "kiosk", "web"])
            if ev == "pay":
                props["amount"] = rng.choice([5, 12.5, 30, 80, 150])
            if rng.random() < 0.3:
                props["coupon"] = rng.choice(["SPRING10", "VIP"])
            rows.append((u, ev, t, props))
    profiles = {u: {k: v for k, v in (("group", rng.choice(["family", "student", None])),
                                      ("age", rng.choice([19, 30, 45, None])))
                    if v is not None}
                for u in range(1, 16) if u % 5}
    return rows, profiles


def analyzer(rows: Sequence[Any], profiles: dict[int, dict[str, Any]],
             tz: str = "UTC") -> Analyzer:
    return make_analyzer(rows, profiles, tz=tz,
                         segments=lambda project, name: SEGMENTS[name])


def run(an: Analyzer, case: str, **extra: Any) -> dict[str, Any]:
    return an.run(kind_of(case), {**RANGE, **SPECS[case], **extra}).to_json()


def test_cases_cover_every_kind() -> None:
    assert {kind_of(c) for c in CASES} == set(KINDS)


# ---------------------------------------------------------------------------- filters

FILTERS: list[Any] = [
    {"property": "channel", "op": "=", "value": "app"},
    {"property": "channel", "op": "!=", "value": "kiosk"},
    {"or": [{"property": "amount", "op": ">", "value": 12.5},
            {"property": "amount", "op": "is not set"}]},
    {"or": [{"property": "amount", "op": ">=", "value": 30},
            {"property": "coupon", "op": "is set"}]},
    {"or": [{"property": "amount", "op": "<", "value": 80},
            {"property": "channel", "op": "in", "value": ["app", "web"]}]},
    {"or": [{"property": "amount", "op": "<=", "value": 30},
            {"property": "amount", "op": "is not set"}]},
    {"property": "channel", "op": "not in", "value": ["web"]},
    {"or": [{"property": "coupon", "op": "contains", "value": "VIP"},
            {"property": "channel", "op": "contains", "value": "osk"}]},
    {"property": "channel", "op": "regex", "value": "^(app|web)$"},
    {"property": "coupon", "op": "is not set"},
    [{"property": "user.group", "op": "=", "value": "family"}],
    [{"property": "age", "on": "profile", "op": ">=", "value": 30},
     {"property": "channel", "op": "is set"}],
    {"property": "user.group", "op": "not in", "value": ["family"]},
    {"and": [{"or": [{"property": "channel", "op": "=", "value": "app"},
                     {"property": "user.group", "op": "in", "value": ["student"]}]},
             {"or": [{"property": "amount", "op": "is not set"},
                     {"and": [{"property": "amount", "op": "<", "value": 100},
                              {"property": "coupon", "op": "!=", "value": "VIP"}]}]}]},
]


def _comparable(case: str, out: dict[str, Any]) -> dict[str, Any]:
    """A result without what may legitimately differ between two caches: the time zone
    label, and the order in which a path's nodes and edges are listed (by event code,
    which follows the order events were first seen)."""
    out = {k: v for k, v in out.items() if k != "time_zone"}
    if kind_of(case) == "paths":
        out["nodes"] = sorted(out["nodes"], key=lambda n: n["id"])
        out["edges"] = sorted(out["edges"], key=lambda e: (e["source"], e["target"]))
        out["top_paths"] = sorted((tuple(p["path"]), p["count"]) for p in out["top_paths"])
        out.pop("breakdown", None)
    return out


@pytest.mark.parametrize("case", CASES)
def test_where_equals_running_on_the_events_it_keeps(case: str) -> None:
    rows, profiles = dataset(1)
    full = analyzer(rows, profiles)
    for f in FILTERS:
        kept = [r for r in rows if ref.filter_holds(f, r[3], profiles.get(r[0], {}))]
        assert 0 < len(kept) < len(rows), f
        want = run(analyzer(kept, profiles), case)
        got = run(full, case, where=f)
        assert _comparable(case, got) == _comparable(case, want), f


# ------------------------------------------------------------------------- time zone

@pytest.mark.parametrize("case", CASES)
def test_time_zone_moves_every_boundary(case: str) -> None:
    """Local midnight in Asia/Shanghai is 16:00 UTC the day before: events 8 hours
    earlier, asked in that zone (by the spec, or as the analyzer's default), give the
    same answer as the original events in UTC."""
    rows, profiles = dataset(2)
    # Events in the first hours of a day: 8 hours earlier they fall on the day before
    # in UTC, so the zone decides which day (and whether the range) holds them.
    for u in (1, 2, 6):
        for day in (0, 3, 4, 6):
            rows += [(u, "view", day * D + H, {"channel": "app"}),
                     (u, "add", day * D + 2 * H, {}),
                     (u, "pay", day * D + 3 * H, {"channel": "web", "amount": 30})]
    rows += [(20, "view", 3 * D + H, {}), (20, "pay", 3 * D + 3 * H, {"amount": 30})]
    want = run(analyzer(rows, profiles), case)
    shifted = [(r[0], r[1], r[2] - 8 * H, r[3]) for r in rows]
    by_spec = run(analyzer(shifted, profiles), case, time_zone="Asia/Shanghai")
    by_default = run(analyzer(shifted, profiles, tz="Asia/Shanghai"), case)
    assert _comparable(case, by_spec) == _comparable(case, want)
    assert _comparable(case, by_default) == _comparable(case, want)
    # The zone matters: the shifted events asked in UTC answer differently.
    assert _comparable(case, run(analyzer(shifted, profiles), case)) != _comparable(case, want)


# ------------------------------------------------------------------------- breakdowns

BREAKDOWNS: dict[str, dict[str, Any]] = {
    "event": {"property": "channel"},
    "event_last": {"property": "channel", "attribution": "last"},
    "profile": {"property": "user.group"},
    "segments": {"segments": ["vip", "new"]},
}


def _parts(case: str, out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Breakdown parts by value, each shaped like a whole result (without its cells'
    ``/VALUE`` suffix)."""
    if kind_of(case) == "events":
        parts: dict[str, dict[str, Any]] = {}
        for s in out["series"]:
            parts.setdefault(s["breakdown"], {"series": []})["series"].append(
                {**s, "breakdown": None})
        return {v: strip_suffix(p, f"/{v}") for v, p in parts.items()}
    assert "breakdown" in out, case
    return {p["value"]: strip_suffix({k: v for k, v in p.items() if k != "value"},
                                     f"/{p['value']}") for p in out["breakdown"]}


def _members(case: str, by: str, events: list[ref.Event],
             profiles: dict[int, dict[str, Any]]) -> dict[str, set[int]]:
    """Per breakdown value, the users it names (by plain Python)."""
    users = {e[0] for e in events}
    if by == "segments":
        return {name: set(ids) & users for name, ids in SEGMENTS.items()}
    out: dict[str, set[int]] = {}
    if by == "profile":
        for u in users:
            out.setdefault(str(profiles.get(u, {}).get("group", "(none)")), set()).add(u)
        return out
    values = ref.deciding_value(events, STARTS[case], "channel", last=by == "event_last")
    if case == "lifecycle":  # it counts users active only before the range too
        values = {u: values.get(u, "(none)") for u in users}
    for u, v in values.items():
        out.setdefault(v, set()).add(u)
    return out


@pytest.mark.parametrize("by", sorted(BREAKDOWNS))
@pytest.mark.parametrize("case", CASES)
def test_breakdown_parts_equal_runs_over_their_users(case: str, by: str) -> None:
    if kind_of(case) in ("events", "funnel") and by.startswith("event"):
        pytest.skip("events split each event by its own value, funnels by their "
                    "attribution rule: tested in test_analyses and test_funnel_rules")
    rows, profiles = dataset(3)
    an = analyzer(rows, profiles)
    out = run(an, case, breakdown=BREAKDOWNS[by])
    parts = _parts(case, out)
    members = _members(case, by, _canonical(make_conn(rows)), profiles)
    assert len(parts) >= 2
    for value, part in parts.items():
        who = members.get(value, set())
        want = run(analyzer([r for r in rows if r[0] in who], profiles), case)
        assert _comparable(case, part) == {
            k: v for k, v in _comparable(case, want).items() if k in part}, (value, who)
    if by != "segments":  # a user may be in several segments, in none of the others
        whole = _comparable(case, out)
        for key in ("users", "paths", "intervals"):
            if isinstance(whole.get(key), int):
                assert sum(p[key] for p in parts.values()) == whole[key], key


def test_rfm_breakdown_keeps_the_scores_of_the_whole_base() -> None:
    """Quantile scores rank users against everyone scored: a part shows where its users
    stand in the whole base, so the parts add up to the whole, layer by layer."""
    rows, profiles = dataset(4)
    an = analyzer(rows, profiles)
    spec = {**RANGE, "event": "pay", "monetary": "amount"}
    whole = an.run("rfm", spec).to_json()
    out = an.run("rfm", {**spec, "breakdown": {"property": "channel"}})
    parts = out.to_json()["breakdown"]
    for i, layer in enumerate(whole["layers"]):
        assert sum(p["layers"][i]["users"] for p in parts) == layer["users"]
        opened = sorted(u for p in parts for u in out.users(p["layers"][i]["cell"]))
        assert opened == sorted(out.users(layer["cell"]))
    frame = out.frame("users").set_index("user_id")
    first_pay = ref.deciding_value(_canonical(make_conn(rows)), STARTS["rfm"], "channel")
    for p in parts:
        for cell in (c["cell"] for c in p["rf_grid"] if c["users"]):
            for u in out.users(cell):
                assert first_pay[int(u)] == p["value"]
                r, f = cell.split("/")[0].split(":")[1:]
                assert (frame.loc[u, "r"], frame.loc[u, "f"]) == (int(r), int(f))


def test_step_attribution_is_for_funnels_only() -> None:
    an = analyzer(*dataset(5))
    for case in CASES:
        if kind_of(case) in ("events", "funnel"):
            continue
        with pytest.raises(Exception) as err:
            run(an, case, breakdown={"property": "channel", "attribution": "step"})
        assert getattr(err.value, "field", None) == "breakdown.attribution", case


# ------------------------------------------------------------------- every number opens

def _check_cells(an: Analyzer, case: str, spec: dict[str, Any],
                 every_count_of_users: bool) -> int:
    res = an.run(kind_of(case), spec)
    out = res.to_json()
    seen = 0
    for num in numbers(out):
        users = res.users(num.cell)
        assert list(users) == sorted(set(users.tolist())), num
        if num.exact or every_count_of_users:
            assert len(users) == num.count, num
        else:
            assert len(users) <= num.count and (len(users) > 0) == (num.count > 0), num
        seen += num.count > 0
    return seen


@pytest.mark.parametrize("by", [None, *sorted(BREAKDOWNS)])
@pytest.mark.parametrize("case", [*CASES, "rfm_quantiles"])
def test_every_number_opens_as_its_users(case: str, by: str | None) -> None:
    spec = {**RANGE, **SPECS.get(case, {"event": "pay", "monetary": "amount"})}
    if by is not None:
        spec["breakdown"] = BREAKDOWNS[by]
    kind = kind_of(case)
    rows, profiles = dataset(6)
    an = analyzer(rows, profiles)
    # Every series of the events case measures users, so its values count users too.
    seen = _check_cells(an, case, spec, kind == "events")
    assert seen >= 3
    out = an.run(kind, spec).to_json()
    missing = list(user_counts_without_cells(out))
    # Retention's totals add cohort memberships, which a recurring user holds several of.
    assert [m for m in missing if kind != "retention"] == []
    # A page of users with their profiles, and the whole list to save as a segment.
    cell = next(n.cell for n in numbers(out) if n.count >= 2 and (n.exact or kind == "events"))
    ids = an.cell_user_ids(kind, spec, cell)
    page = an.users(kind, spec, cell, offset=1, limit=1, profile_properties=["group"])
    assert page["total"] == len(ids) and page["users"][0]["user_id"] == ids[1]
    assert page["users"][0]["group"] == profiles.get(ids[1], {}).get("group")


def test_unknown_breakdown_values_do_not_open() -> None:
    an = analyzer(*dataset(7))
    for case in CASES:
        res = an.run(kind_of(case), {**RANGE, **SPECS[case],
                                     "breakdown": {"property": "user.group"}})
        cell = next(n.cell for n in numbers(res.to_json()) if "/" in n.cell)
        base = cell.split("/")[0]
        with pytest.raises(Exception) as err:
            res.users(f"{base}/no-such-group")
        assert type(err.value).__name__ == "NotFound", case


@pytest.mark.parametrize("rows", [[], [(1, "other", 5, {})]], ids=["empty", "unrelated"])
def test_every_case_answers_with_nothing_to_count(rows: list[Any]) -> None:
    """No events, or one only the kinds reading any event count: answers, not errors (a
    held funnel over an empty project used to fail with one empty group and no user)."""
    an = analyzer(rows, {})
    for case in CASES:
        for bd in (None, *BREAKDOWNS.values()):
            res = an.run(kind_of(case), {**RANGE, **SPECS[case],
                                         **({"breakdown": bd} if bd else {})})
            for n in numbers(res.to_json()):
                assert len(res.users(n.cell)) == n.count, (case, bd, n)
                assert n.count == 0 or (rows and case in (
                    "lifecycle", "lifecycle_stages", "transitions")), (case, bd, n)
