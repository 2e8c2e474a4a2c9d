"""generate(): determinism, arguments, and what holds for any seed and size."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import END_MS
from touchline.demo import generate
from touchline.demo.calendar import DAY_MS
from touchline.errors import InvalidInput


def digest(seed: int, **kw: Any) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for batch in generate(seed, end_ms=kw.pop("end_ms", END_MS), **kw):
        h.update(orjson.dumps(batch, option=orjson.OPT_SORT_KEYS))
        n += len(batch)
    return h.hexdigest(), n


def test_same_seed_same_records() -> None:
    a = digest(3, customers=400, days=30)
    assert a == digest(3, customers=400, days=30)
    assert a[1] > 5000


def test_other_seed_other_records() -> None:
    assert digest(3, customers=400, days=30)[0] != digest(4, customers=400, days=30)[0]


def test_batch_size_only_changes_the_cut() -> None:
    small = [r for b in generate(5, customers=200, days=20, end_ms=END_MS, batch_size=777)
             for r in b]
    big = [r for b in generate(5, customers=200, days=20, end_ms=END_MS) for r in b]
    assert orjson.dumps(small) == orjson.dumps(big)
    sizes = [len(b) for b in generate(5, customers=200, days=20, end_ms=END_MS, batch_size=777)]
    assert set(sizes[:-1]) == {777} and 0 < sizes[-1] <= 777


@pytest.mark.parametrize(("field", "kw"), [
    ("seed", {"seed": -1}),
    ("seed", {"seed": True}),
    ("customers", {"customers": 0}),
    ("days", {"days": 0}),
    ("end_ms", {"end_ms": 1000}),
    ("batch_size", {"batch_size": 0}),
])
def test_bad_arguments_name_the_field(field: str, kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"seed": 1, "customers": 10, "days": 5, "end_ms": END_MS, **kw}
    with pytest.raises(InvalidInput) as err:
        generate(args.pop("seed"), **args)
    assert err.value.field == field


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), customers=st.integers(1, 60), days=st.integers(1, 50),
       end_ms=st.integers(1_600_000_000_000, 1_900_000_000_000))
def test_any_size_gives_ordered_records_inside_the_window(
        seed: int, customers: int, days: int, end_ms: int) -> None:
    records = [r for b in generate(seed, customers=customers, days=days, end_ms=end_ms)
               for r in b]
    times = [r["time"] for r in records]
    assert times == sorted(times)
    assert all(end_ms - (days + 1) * DAY_MS <= t < end_ms for t in times)
    assert sum(r["type"] == "item_set" for r in records) >= 32
    for r in records:
        if r["type"] != "item_set":
            assert 0 < len(r["distinct_id"]) <= 255 or r["distinct_id"] == "x" * 300
