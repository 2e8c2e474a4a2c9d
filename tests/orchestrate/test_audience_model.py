"""Parsing definitions and uploads: never anything but InvalidInput on bad input."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.errors import InvalidInput
from touchline.orchestrate.audience_csv import read_user_ids
from touchline.orchestrate.audience_model import (
    All,
    Performed,
    load_definition,
    parse_condition,
    parse_duration_ms,
)

KEYS = ["all", "any", "not", "trait", "performed", "not_performed", "first_performed",
        "last_performed", "in_segment", "bucket", "rfm_layer", "op", "value", "within",
        "from", "to", "where", "aggregate", "property", "salt", "spec", "more_than", "x"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 500) | st.floats(allow_nan=True)
    | st.sampled_from(["", "7d", "order", "amount", ">=", "in", "2026-01-01", "sum"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_any_input_parses_or_names_a_path(node: Any) -> None:
    try:
        parse_condition(node)
    except InvalidInput as exc:
        assert exc.field.startswith("conditions")
        assert exc.rule


@pytest.mark.parametrize(("node", "field", "rule"), [
    ({"all": [{"trait": "a", "value": 1}, {"performed": "x", "within": "7 days"}]},
     "conditions.all[1].within", "positive duration"),
    ({"performed": "x", "op": "between", "value": [3, 1]}, "conditions.value", "low"),
    ({"performed": "x", "aggregate": {"median": "amount"}}, "conditions.aggregate", "count"),
    ({"trait": "a", "op": "~", "value": 1}, "conditions.op", "must be one of"),
    ({"trait": "a", "op": "in", "value": []}, "conditions.value", "non-empty list"),
    ({"trait": "a", "value": 1, "performed": "x"}, "conditions", "use all/any"),
    ({"any": [{"not": {"bucket": [50, 50]}}]}, "conditions.any[0].not.bucket", "from < to"),
    ({"first_performed": "x"}, "conditions", "exactly one of"),
    ({"performed": "x", "where": [{"property": "9a", "value": 1}]},
     "conditions.where[0].property", "name"),
    ({"trait": "a", "value": 1, "extra": 2}, "conditions.extra", "unknown key"),
])
def test_errors_name_the_path_and_rule(node: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_condition(node)
    assert err.value.field == field
    assert rule in err.value.rule


def test_yaml_definition() -> None:
    d = load_definition(
        "name: big\nconditions:\n  all:\n    - performed: pay\n      aggregate: {sum: amount}\n"
        "      value: 300\n      from: 2026-10-01T00:00:00Z\n    - trait: vip\n      value: true\n")
    assert d.name == "big"
    assert isinstance(d.conditions, All)
    first = d.conditions.items[0]
    assert isinstance(first, Performed)
    assert (first.aggregate, first.prop, first.op, first.value) == ("sum", "amount", ">=", (300.0,))
    assert first.window.start_ms == 1_790_812_800_000
    dated = load_definition("name: d\nconditions: {performed: pay, from: 2026-10-01}\n")
    assert isinstance(dated.conditions, Performed)
    assert dated.conditions.window.start_ms == 1_790_812_800_000
    with pytest.raises(InvalidInput) as err:
        load_definition("name: x\nconditions: [\n")
    assert err.value.field == "definition" and "line" in err.value.rule


@given(st.integers(1, 10_000), st.sampled_from(["ms", "s", "m", "h", "d", "w"]))
def test_durations(n: int, unit: str) -> None:
    scale = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
             "w": 604_800_000}[unit]
    assert parse_duration_ms(f"{n}{unit}", "x") == n * scale


cells = st.one_of(st.integers(-10**12, 10**12).map(str), st.text(max_size=6))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(cells, cells), max_size=20))
def test_csv_keeps_good_rows_and_reports_bad_ones(rows: list[tuple[str, str]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["name", "user_id"])
    writer.writerows([(name, uid) for name, uid in rows])
    ids, errors = read_user_ids(out.getvalue())
    good, bad = [], 0
    for _, uid in rows:
        if not uid.strip() and not _.strip():
            continue  # a blank line
        try:
            good.append(int(uid.strip()))
        except ValueError:
            bad += 1
    assert ids == good
    assert len(errors) == bad
    assert all(e.field.startswith("csv line ") for e in errors)
