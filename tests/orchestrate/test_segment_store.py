"""Saved segments, members and history on both state-store backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_audience_support import STATE_BACKENDS, state_store

from touchline.errors import Conflict, InvalidInput, NotFound
from touchline.orchestrate.segments import (
    delete_segment,
    get_segment,
    history,
    list_segments,
    member_ids,
    members_of,
    save_dynamic_segment,
    save_static_segment,
    signals_after,
)


@pytest.fixture(params=STATE_BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    with state_store(request.param, tmp_path) as s:
        yield s


def test_save_static_segment_then_replace_records_history(store: Any) -> None:
    with store.transaction() as tx:
        seg = save_static_segment(
            tx, "demo", "high value", [3, 1, 2, 2], {"analysis": "rfm"}, now_ms=1000
        )
    assert seg.kind == "static"
    assert seg.member_count == 3
    assert seg.source == {"analysis": "rfm"}
    assert seg.computed_ms == 1000
    with store.transaction() as tx:
        seg = save_static_segment(tx, "demo", "high value", [2, 3, 4], {"csv": "x"}, now_ms=2000)
        assert member_ids(tx, "demo", "high value") == {2, 3, 4}
        assert members_of(tx, "demo", "high value", limit=2) == [(2, 1000), (3, 1000)]
        assert members_of(tx, "demo", "high value", after_user=3) == [(4, 2000)]
        rows = [(c.user_id, c.change, c.at_ms) for c in history(tx, "demo", "high value")]
        assert sorted(rows) == [
            (1, "enter", 1000), (1, "exit", 2000), (2, "enter", 1000),
            (3, "enter", 1000), (4, "enter", 2000),
        ]
        ids = [c.id for c in signals_after(tx, 0)]
        assert ids == sorted(ids) and len(ids) == 5
        assert [c.user_id for c in signals_after(tx, ids[2])] == [4, 1]
    assert seg.member_count == 3
    assert seg.created_ms == 1000 and seg.updated_ms == 2000


def test_projects_are_separate_and_kinds_conflict(store: Any) -> None:
    with store.transaction() as tx:
        save_static_segment(tx, "a", "s", [1], {}, now_ms=1)
        save_static_segment(tx, "b", "s", [2, 3], {}, now_ms=1)
        save_dynamic_segment(tx, "a", "d", {"trait": "x", "op": "is_set"}, now_ms=1)
        assert [s.name for s in list_segments(tx, "a")] == ["d", "s"]
        assert [s.name for s in list_segments(tx, "a", "static")] == ["s"]
        assert get_segment(tx, "b", "s").member_count == 2
        with pytest.raises(Conflict):
            save_static_segment(tx, "a", "d", [1], {}, now_ms=2)
        delete_segment(tx, "a", "s")
        with pytest.raises(NotFound):
            get_segment(tx, "a", "s")
        assert member_ids(tx, "a", "s") == set()


@pytest.mark.parametrize(
    ("name", "users", "field"),
    [("", [1], "name"), ("a/b", [1], "name"), ("ok", [1, "x"], "user_ids[1]"),
     ("ok", [True], "user_ids[0]")],
)
def test_bad_input_names_the_field(store: Any, name: str, users: list[Any], field: str) -> None:
    with store.transaction() as tx, pytest.raises(InvalidInput) as err:
        save_static_segment(tx, "demo", name, users, {}, now_ms=1)
    assert err.value.field == field
