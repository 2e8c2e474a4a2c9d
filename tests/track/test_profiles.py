"""Profile operations, lookups and full scans."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import touchline.track.profiles as profiles_mod

# The shared state-store fixtures (both backends) live with the store's tests.
from store.conftest import *  # noqa: F403
from store.conftest import Rec
from touchline.store.state import StateStore
from touchline.track.profiles import apply_profile_op
from touchline.track.stitch import (
    StitchPolicy,
    apply_records,
    iter_identities,
    iter_items,
    iter_profiles,
    iter_user_map,
    lookup_profile,
    profiles_by_ids,
    touch_profiles,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
props = st.dictionaries(st.text(min_size=1, max_size=4), json_values, max_size=5)
ops = st.sampled_from(["set", "set_once", "increment", "append", "unset", "delete", "bogus"])


def test_each_operation() -> None:
    base = {"a": 1, "tags": ["x"]}
    assert apply_profile_op(base, "set", {"a": 2, "b": 3}) == ({"a": 2, "b": 3, "tags": ["x"]}, False, [])
    assert apply_profile_op(base, "set_once", {"a": 9, "c": 1})[0] == {"a": 1, "tags": ["x"], "c": 1}
    assert apply_profile_op(base, "increment", {"a": 2.5, "n": 1})[0] == {"a": 3.5, "n": 1, "tags": ["x"]}
    assert apply_profile_op(base, "append", {"tags": ["y", "x", "y"]})[0]["tags"] == ["x", "y"]
    assert apply_profile_op(base, "append", {"new": "solo"})[0]["new"] == ["solo"]
    assert apply_profile_op(base, "unset", {"a": True, "zz": True})[0] == {"tags": ["x"]}
    assert apply_profile_op(base, "delete", {}) == ({}, True, [])
    assert base == {"a": 1, "tags": ["x"]}  # never changed in place


def test_bad_keys_are_reported_and_good_ones_apply() -> None:
    new, deleted, problems = apply_profile_op(
        {"s": "text", "n": 1}, "increment", {"s": 1, "n": True, "m": 2})
    assert new == {"s": "text", "n": 1, "m": 2} and not deleted
    assert problems == [("properties.s", "cannot increment a value that is not a number"),
                        ("properties.n", "increment needs a number")]
    new, _, problems = apply_profile_op({"t": "x"}, "append", {"t": ["a"], "u": [1]})
    assert new == {"t": "x"}
    assert [f for f, _ in problems] == ["properties.t", "properties.u"]
    _, _, problems = apply_profile_op({}, "bogus", {})
    assert problems and problems[0][0] == "op"


@given(start=props, op=ops, values=props)
def test_operations_never_raise(start: dict, op: str, values: dict) -> None:
    new, deleted, problems = apply_profile_op(start, op, values)
    assert isinstance(new, dict) and isinstance(problems, list)
    assert deleted == (op == "delete")
    if op == "set":
        assert all(new[k] == v for k, v in values.items())
    if op == "unset":
        assert not set(values) & set(new)


@given(start=props, values=st.dictionaries(st.text(min_size=1, max_size=3),
                                           st.lists(st.text(max_size=3), max_size=4), max_size=3))
def test_append_is_idempotent(start: dict, values: dict) -> None:
    once, _, _ = apply_profile_op(start, "append", values)
    twice, _, _ = apply_profile_op(once, "append", values)
    assert twice == once


def test_lookup_by_bare_or_typed_identity(state_store: StateStore) -> None:
    r = Rec()
    policy = StitchPolicy()
    with state_store.transaction() as tx:
        out = apply_records(tx, [
            r.link({"login_id": "13800000000", "email": "li@x.cn"}),
            r.track({"mobile": "13800000000"}),
            r.track({"openid": "wx:abc"}),
        ], policy)
    login_person, mobile_person, wx = out.profile_ids
    with state_store.transaction(read_only=True) as tx:
        # The same value as a login id and as a mobile: the login id is trusted first.
        assert lookup_profile(tx, "default", "13800000000").user_id == login_person
        assert lookup_profile(tx, "default", "mobile:13800000000").user_id == mobile_person
        assert lookup_profile(tx, "default", "email:li@x.cn").identities == {
            "email": ["li@x.cn"], "login_id": ["13800000000"]}
        # A colon inside a value is not a type.
        assert lookup_profile(tx, "default", "wx:abc").user_id == wx
        assert lookup_profile(tx, "default", "openid:wx:abc").user_id == wx
        assert lookup_profile(tx, "default", "nobody") is None
        assert lookup_profile(tx, "other", "13800000000") is None
        found = profiles_by_ids(tx, "default", [login_person, 10**12])
    assert list(found) == [login_person]


def test_full_scans_for_the_replica(state_store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiles_mod, "_PAGE", 2)  # exercise the paging
    r = Rec()
    with state_store.transaction() as tx:
        apply_records(tx, [r.track({"anonymous_id": f"a{n}"}) for n in range(5)]
                      + [r.track({"login_id": "u1"}),
                         r.link({"login_id": "u1", "anonymous_id": "a4"}),
                         r.profile({"anonymous_id": "a3"}, "delete", {}),
                         r.item("dish", "d1", "set", {"p": 1}),
                         r.item("dish", "d2", "set", {"p": 2}),
                         r.item("menu", "m1", "set", {})], StitchPolicy())
    with state_store.transaction(read_only=True) as tx:
        people = list(iter_profiles(tx, "default"))
        idents = list(iter_identities(tx, "default"))
        items = list(iter_items(tx, "default"))
        user_map = list(iter_user_map(tx, "default"))
        a4 = lookup_profile(tx, "default", "a4")
    assert a4 is not None
    ids = [p.user_id for p in people]
    assert len(ids) == 4 and ids == sorted(ids)  # a0..a2 and the merged a4+u1; a3 deleted
    assert len(idents) == 6
    assert {i.user_id for i in idents if i.id_value in ("a4", "u1")} == {a4.user_id}
    assert [(i.item_type, i.item_id) for i in items] == [("dish", "d1"), ("dish", "d2"), ("menu", "m1")]
    assert len(user_map) == 1 and user_map[0][1] == a4.user_id


def test_touch_profiles_counts_for_the_survivor(state_store: StateStore) -> None:
    r = Rec()
    with state_store.transaction() as tx:
        apply_records(tx, [r.profile({"anonymous_id": "a1"}, "set", {}),
                           r.profile({"login_id": "u1"}, "set", {})], StitchPolicy())
        old, new = (lookup_profile(tx, "default", x).user_id for x in ("a1", "u1"))
        apply_records(tx, [r.link({"login_id": "u1", "anonymous_id": "a1"})], StitchPolicy())
    with state_store.transaction() as tx:
        touch_profiles(tx, "default", [(new, 3, 500, 900), (old, 2, 100, 200), (10**12, 5, 1, 2)])
        touch_profiles(tx, "other", [(old, 7, 1, 2)])  # another project's ids count for nothing
        view = lookup_profile(tx, "default", "u1")
    assert view is not None and view.user_id == old
    assert (view.event_count, view.first_seen_ms, view.last_seen_ms) == (5, 100, 900)
