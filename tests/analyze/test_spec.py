"""Spec readers: durations, dates, filters and maps, with hypothesis on their inputs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from touchline.analyze.filters import parse_filter
from touchline.analyze.maps import DEMO_MAPS, load_map, parse_map
from touchline.analyze.spec import parse_date, parse_duration
from touchline.errors import InvalidInput, NotFound

UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


@given(n=st.integers(1, 10**6), unit=st.sampled_from(list(UNITS)))
def test_durations_round_trip(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}", "window") == n * UNITS[unit]


@given(raw=st.one_of(st.text(max_size=8), st.integers(), st.floats(), st.none(), st.booleans()))
def test_bad_durations_and_dates_name_the_field(raw: Any) -> None:
    for parse in (parse_duration, parse_date):
        try:
            parse(raw, "f")
        except InvalidInput as exc:
            assert exc.field == "f"


json_st = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["property", "op", "value", "on", "and", "or"]), inner,
                        max_size=4)),
    max_leaves=10)


@given(raw=json_st)
def test_filters_parse_or_fail_with_invalid_input(raw: Any) -> None:
    try:
        parse_filter(raw)
    except InvalidInput as exc:
        assert exc.field.startswith("where")


def test_demo_maps_load() -> None:
    names = sorted(p.stem for p in DEMO_MAPS.glob("*.yaml"))
    assert names == ["paid_membership", "restaurant"]
    m = load_map("restaurant")
    assert [s.name for s in m.stages] == ["arrive", "order", "wait", "dine", "feedback"]
    assert m.window_ms == 86_400_000
    with pytest.raises(NotFound):
        load_map("nope")
    with pytest.raises(InvalidInput) as err:
        parse_map({"name": "x", "stages": [{"name": "a", "events": ["e"]},
                                           {"name": "a", "events": []}]})
    assert err.value.field == "map.stages[1].events"
