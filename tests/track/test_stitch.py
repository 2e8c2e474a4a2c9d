"""Identity stitching rules and classic failures, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

# The shared state-store fixtures (both backends) live with the store's tests.
from store.conftest import *  # noqa: F403
from store.conftest import Rec
from touchline.store.batch import StateOutcome
from touchline.store.state import StateStore, open_state_store
from touchline.track.records import Record
from touchline.track.stitch import (
    StitchPolicy,
    apply_records,
    lookup_profile,
    profiles_by_ids,
    resolve_records,
)

POLICY = StitchPolicy()


def apply(store: StateStore, records: list[Record], policy: StitchPolicy = POLICY) -> StateOutcome:
    with store.transaction() as tx:
        return apply_records(tx, records, policy)


def owner(store: StateStore, identity: str, project: str = "default") -> int | None:
    with store.transaction(read_only=True) as tx:
        view = lookup_profile(tx, project, identity)
    return None if view is None else view.user_id


def error_fields(outcome: StateOutcome) -> list[tuple[int, str]]:
    return [(i, e.field) for i, e in outcome.errors]


def test_events_of_one_identity_make_one_profile(state_store: StateStore) -> None:
    r = Rec()
    out = apply(state_store, [r.track({"anonymous_id": "a1"}, time_ms=5000),
                              r.track({"anonymous_id": "a1"}, time_ms=1000),
                              r.track({"anonymous_id": "a1"}, time_ms=3000)])
    pid = out.profile_ids[0]
    assert pid is not None and out.profile_ids == [pid, pid, pid]
    assert out.errors == []
    [row] = out.profiles
    assert (row.user_id, row.first_seen_ms, row.last_seen_ms, row.event_count) == (pid, 1000, 5000, 3)
    assert [(i.id_type, i.id_value, i.user_id) for i in out.identities] == [
        ("anonymous_id", "a1", pid)]
    # The next batch finds the same person and widens the counters.
    out2 = apply(state_store, [r.track({"anonymous_id": "a1"}, time_ms=9000)])
    assert out2.profile_ids == [pid]
    assert out2.identities == []  # nothing about the identity changed
    assert (out2.profiles[0].event_count, out2.profiles[0].last_seen_ms) == (4, 9000)


def test_known_identities_are_served_from_the_cache(state_store: StateStore) -> None:
    r = Rec()
    out = apply(state_store, [r.track({"login_id": "u1"})])
    cache = state_store.caches["identity"]
    assert cache.get_many([("default", "login_id", "u1")]) == {
        ("default", "login_id", "u1"): out.profile_ids[0]}


def test_profile_ids_grow_with_age(state_store: StateStore) -> None:
    r = Rec()
    a = apply(state_store, [r.track({"anonymous_id": "a1"})]).profile_ids[0]
    b = apply(state_store, [r.track({"anonymous_id": "a2"})]).profile_ids[0]
    assert a is not None and b is not None and a < b


def test_only_explicit_links_join_identities(state_store: StateStore) -> None:
    r = Rec()
    out = apply(state_store, [r.track({"login_id": "u1", "anonymous_id": "a1"})])
    assert owner(state_store, "login_id:u1") == out.profile_ids[0]
    assert owner(state_store, "anonymous_id:a1") is None


def test_signup_attaches_the_login_to_the_anonymous_profile(state_store: StateStore) -> None:
    r = Rec()
    anon = apply(state_store, [r.track({"anonymous_id": "a1"})]).profile_ids[0]
    out = apply(state_store, [r.link({"login_id": "u1", "anonymous_id": "a1"}),
                              r.track({"login_id": "u1"})])
    assert out.profile_ids == [anon, anon]
    assert out.user_map == {}  # nothing merged: the login joined an existing profile
    assert {(i.id_type, i.user_id) for i in out.identities} >= {("login_id", anon)}
    with state_store.transaction() as tx:
        view = lookup_profile(tx, "default", "u1")
    assert view is not None and view.identities == {"anonymous_id": ["a1"], "login_id": ["u1"]}
    assert view.event_count == 2


def test_link_merges_into_the_oldest_profile(state_store: StateStore) -> None:
    r = Rec()
    old = apply(state_store, [r.track({"anonymous_id": "a1"}),
                              r.profile({"anonymous_id": "a1"}, "set", {"city": "SH", "a": 1})])
    new = apply(state_store, [r.track({"login_id": "u1"}), r.track({"login_id": "u1"}),
                              r.profile({"login_id": "u1"}, "set", {"city": "BJ"})])
    p_old, p_new = old.profile_ids[0], new.profile_ids[0]
    assert p_old is not None and p_new is not None and p_old < p_new
    # The login id comes first, but the survivor is still the older profile.
    out = apply(state_store, [r.link({"login_id": "u1", "anonymous_id": "a1"})])
    assert out.profile_ids == [p_old]
    assert out.user_map == {("default", p_new): p_old}
    rows = {p.user_id: p for p in out.profiles}
    assert rows[p_new].deleted is True
    survivor = rows[p_old]
    assert survivor.deleted is False and survivor.event_count == 3
    # The survivor's own values win; the merged profile fills the gaps.
    assert survivor.properties == {"city": "SH", "a": 1}
    assert {(i.id_type, i.id_value, i.user_id) for i in out.identities} == {
        ("login_id", "u1", p_old), ("anonymous_id", "a1", p_old)}
    assert owner(state_store, "u1") == owner(state_store, "a1") == p_old
    with state_store.transaction() as tx:
        by_id = profiles_by_ids(tx, "default", [p_new, p_old, 999_999])
    assert set(by_id) == {p_new, p_old} and by_id[p_new].user_id == p_old


def test_swapped_alias_arguments_give_the_same_person(state_store: StateStore) -> None:
    r1, r2 = Rec("default"), Rec("default")
    with state_store.transaction() as tx:
        tx.create_project("other")
    apply(state_store, [r1.track({"anonymous_id": "a1"}), r1.track({"login_id": "u1"}),
                        r1.link({"login_id": "u1", "anonymous_id": "a1"})])
    apply(state_store, [r2.track({"anonymous_id": "a1"}, project="other"),
                        r2.track({"login_id": "u1"}, project="other"),
                        r2.link({"anonymous_id": "a1", "login_id": "u1"}, project="other")])
    with state_store.transaction() as tx:
        one = lookup_profile(tx, "default", "u1")
        two = lookup_profile(tx, "other", "u1")
    assert one is not None and two is not None
    assert one.identities == two.identities == {"anonymous_id": ["a1"], "login_id": ["u1"]}
    assert one.user_id == owner(state_store, "a1")
    assert two.user_id == owner(state_store, "a1", "other")
    assert one.user_id != two.user_id  # projects never share people


def test_logout_keeping_the_old_anonymous_id_never_merges_logins(state_store: StateStore) -> None:
    r = Rec()
    first = apply(state_store, [r.track({"anonymous_id": "a1"}),
                                r.link({"login_id": "u1", "anonymous_id": "a1"})])
    p1 = first.profile_ids[0]
    # u1 logs out, u2 logs in on the same device: the app still sends a1.
    out = apply(state_store, [r.link({"login_id": "u2", "anonymous_id": "a1"}),
                              r.track({"login_id": "u2"}),
                              r.track({"anonymous_id": "a1"})])
    assert error_fields(out) == [(0, "identities.login_id")]
    p2 = out.profile_ids[0]
    assert p2 is not None and p2 != p1
    assert out.profile_ids == [p2, p2, p1]
    assert owner(state_store, "u1") == p1 and owner(state_store, "u2") == p2
    assert owner(state_store, "a1") == p1


def test_two_profiles_with_different_logins_are_never_merged(state_store: StateStore) -> None:
    r = Rec()
    apply(state_store, [r.link({"login_id": "u1", "cookie_id": "c1"}),
                        r.link({"login_id": "u2", "device_id": "d2"})])
    p1, p2 = owner(state_store, "u1"), owner(state_store, "u2")
    out = apply(state_store, [r.link({"cookie_id": "c1", "device_id": "d2"}),
                              r.link({"device_id": "d2", "cookie_id": "c1"}),
                              r.track({"device_id": "d2"})])
    assert error_fields(out) == [(0, "identities.device_id"), (1, "identities.cookie_id")]
    assert "different login_id" in out.errors[0][1].rule
    assert out.profile_ids == [p1, p2, p2]
    assert out.user_map == {}
    assert owner(state_store, "c1") == p1 and owner(state_store, "d2") == p2


def test_two_login_ids_in_one_new_link_keep_the_first(state_store: StateStore) -> None:
    r = Rec()
    out = apply(state_store, [r.link({"login_id": "u1", "email": "x@y.z"}),
                              r.link({"login_id": "u9", "email": "x@y.z"})])
    assert error_fields(out) == [(1, "identities.login_id")]
    assert owner(state_store, "u1") == owner(state_store, "x@y.z")
    assert owner(state_store, "u9") not in (None, owner(state_store, "u1"))


def test_shared_kiosk_device_never_joins_its_members(state_store: StateStore) -> None:
    r = Rec()
    apply(state_store, [r.track({"device_id": "kiosk-7"})])
    kiosk = owner(state_store, "kiosk-7")
    out = apply(state_store, [r.link({"login_id": f"m{n}", "device_id": "kiosk-7"})
                              for n in range(5)])
    people = {owner(state_store, f"login_id:m{n}") for n in range(5)}
    assert len(people) == 5  # five members, five people
    assert kiosk in people  # the first member took the kiosk's history
    assert [i for i, _ in out.errors] == [1, 2, 3, 4]


def test_junk_ids_never_reach_the_graph(state_store: StateStore) -> None:
    r = Rec()
    policy = StitchPolicy(extra_junk_ids=frozenset({"test_user", "123456"}))
    out = apply(state_store, [
        r.track({"anonymous_id": "null"}),
        r.track({"anonymous_id": " Undefined "}),
        r.track({"anonymous_id": "'null'"}),
        r.track({"login_id": "TEST_USER"}),
        r.track({"login_id": "123456"}),
        r.link({"login_id": "u1", "anonymous_id": "[object Object]"}),
        r.track({"anonymous_id": "a-real-one"}),
    ], policy)
    assert out.profile_ids[:5] == [None] * 5
    assert out.profile_ids[5] is not None and out.profile_ids[6] is not None
    refused = {i for i, _ in out.errors}
    assert refused == {0, 1, 2, 3, 4, 5}
    assert ("identities.anonymous_id" in {e.field for i, e in out.errors if i == 5})
    assert owner(state_store, "[object Object]") is None
    assert owner(state_store, "null") is None
    assert owner(state_store, "u1") is not None


def test_hard_coded_anonymous_id_is_stopped_by_the_merge_cap(state_store: StateStore) -> None:
    r = Rec()
    policy = StitchPolicy(max_merges_per_profile=2)
    apply(state_store, [r.track({"cookie_id": "c0"})]
          + [r.track({"device_id": f"d{n}"}) for n in range(1, 4)], policy)
    # A buggy build sends the same hard-coded cookie from every device.
    out = apply(state_store, [r.link({"cookie_id": "c0", "device_id": f"d{n}"})
                              for n in range(1, 4)], policy)
    assert [i for i, _ in out.errors] == [2]
    assert "absorbed too many" in out.errors[0][1].rule
    assert owner(state_store, "d3") != owner(state_store, "c0")
    assert owner(state_store, "d1") == owner(state_store, "d2") == owner(state_store, "c0")


def test_identity_type_cap(state_store: StateStore) -> None:
    r = Rec()
    policy = StitchPolicy(max_identities_per_type=2)
    out = apply(state_store, [r.track({"login_id": "u1"})]
                + [r.link({"login_id": "u1", "cookie_id": f"c{n}"}) for n in range(3)], policy)
    assert error_fields(out) == [(3, "identities.cookie_id")]
    assert owner(state_store, "c2") is None
    with state_store.transaction() as tx:
        view = lookup_profile(tx, "default", "u1")
    assert view is not None and view.identities["cookie_id"] == ["c0", "c1"]
    # A merge that would exceed the cap is refused too.
    apply(state_store, [r.link({"email": "e@x", "cookie_id": "c7"}),
                        r.link({"email": "e@x", "cookie_id": "c8"})], policy)
    out = apply(state_store, [r.link({"cookie_id": "c7", "login_id": "u1"})], policy)
    assert [i for i, _ in out.errors] == [0]
    assert owner(state_store, "c7") != owner(state_store, "u1")


def test_out_of_order_arrival_is_re_attributed(state_store: StateStore) -> None:
    r = Rec()
    late = apply(state_store, [r.track({"login_id": "u1"}, time_ms=50_000)]).profile_ids[0]
    early = apply(state_store, [r.track({"anonymous_id": "a1"}, time_ms=10_000)]).profile_ids[0]
    assert late is not None and early is not None and late < early
    out = apply(state_store, [r.track({"anonymous_id": "a1"}, time_ms=20_000),
                              r.link({"anonymous_id": "a1", "login_id": "u1"}, time_ms=30_000)])
    # The anonymous profile is newer, so it is the one merged away.
    assert out.user_map == {("default", early): late}
    assert out.profile_ids == [late, late]
    survivor = next(p for p in out.profiles if p.user_id == late)
    assert (survivor.first_seen_ms, survivor.last_seen_ms, survivor.event_count) == (
        10_000, 50_000, 3)
    # Later batches see the merged person, and re-report the mapping for the replica.
    again = apply(state_store, [r.track({"anonymous_id": "a1"})])
    assert again.profile_ids == [late]
    assert again.user_map == {("default", early): late}


def test_unlink_splits_a_merged_profile_off_again(state_store: StateStore) -> None:
    r = Rec()
    p1 = apply(state_store, [r.track({"login_id": "u1"}), r.track({"login_id": "u1"})]).profile_ids[0]
    p2 = apply(state_store, [r.track({"cookie_id": "c1"}),
                             r.profile({"cookie_id": "c1"}, "set", {"ua": "ios"})]).profile_ids[0]
    assert p1 is not None and p2 is not None
    merged = apply(state_store, [r.link({"login_id": "u1", "cookie_id": "c1"}),
                                 r.track({"login_id": "u1"})])
    assert merged.user_map == {("default", p2): p1}
    assert next(p for p in merged.profiles if p.user_id == p1).event_count == 4
    out = apply(state_store, [r.unlink({"cookie_id": "c1"}), r.track({"cookie_id": "c1"})])
    assert out.user_map[("default", p2)] == p2  # mapped to itself: no longer merged
    assert out.profile_ids == [None, p2]
    rows = {p.user_id: p for p in out.profiles}
    assert rows[p2].deleted is False and rows[p2].event_count == 2
    assert rows[p1].event_count == 3  # its own 2 and the one after the merge
    assert rows[p2].properties == {"ua": "ios"}
    assert {(i.id_value, i.user_id) for i in out.identities} >= {("c1", p2), ("u1", p1)}
    assert owner(state_store, "u1") == p1 and owner(state_store, "c1") == p2
    # The merge log keeps the history: the merge is marked undone, not forgotten.
    with state_store.transaction() as tx:
        log = tx.fetchall("SELECT survivor, loser, undone_ms FROM merge_log")
    assert [(s, lo) for s, lo, _ in log] == [(p1, p2)] and log[0][2] is not None


def test_unlink_of_a_native_identity_detaches_it(state_store: StateStore) -> None:
    r = Rec()
    p = apply(state_store, [r.link({"login_id": "u1", "cookie_id": "c1"})]).profile_ids[0]
    out = apply(state_store, [r.unlink({"cookie_id": "c1"}), r.track({"cookie_id": "c1"})])
    fresh = out.profile_ids[1]
    assert fresh is not None and fresh != p
    # Detached, then attached again to a new person, within the batch: the last row wins.
    assert [(i.id_value, i.user_id) for i in out.identities if i.id_value == "c1"] == [
        ("c1", fresh)]
    assert owner(state_store, "u1") == p and owner(state_store, "c1") == fresh
    # Unlinking something unknown is harmless.
    assert apply(state_store, [r.unlink({"cookie_id": "nope"})]).errors == []


def test_unlink_reports_the_identity_as_removed(state_store: StateStore) -> None:
    r = Rec()
    apply(state_store, [r.link({"login_id": "u1", "cookie_id": "c1"})])
    out = apply(state_store, [r.unlink({"cookie_id": "c1"})])
    assert [(i.id_type, i.id_value, i.user_id) for i in out.identities] == [
        ("cookie_id", "c1", None)]


def test_profile_operations_in_order(state_store: StateStore) -> None:
    r = Rec()
    ids = {"login_id": "u1"}
    out = apply(state_store, [
        r.profile(ids, "set", {"name": "Li", "level": 1}),
        r.profile(ids, "set_once", {"name": "X", "first_city": "SH"}),
        r.profile(ids, "increment", {"level": 2, "points": 10}),
        r.profile(ids, "append", {"tags": ["a", "b"]}),
        r.profile(ids, "append", {"tags": ["b", "c"]}),
        r.profile(ids, "unset", {"first_city": True}),
        r.profile(ids, "increment", {"name": 1}),
    ])
    assert error_fields(out) == [(6, "properties.name")]
    [row] = out.profiles
    assert row.properties == {"name": "Li", "level": 3, "points": 10, "tags": ["a", "b", "c"]}
    assert row.event_count == 0 and row.first_seen_ms is None
    out = apply(state_store, [r.profile(ids, "delete", {})])
    assert out.profiles[0].deleted is True and out.profiles[0].properties == {}
    out = apply(state_store, [r.profile(ids, "set", {"back": True})])
    assert out.profiles[0].deleted is False and out.profiles[0].properties == {"back": True}


def test_items_set_and_delete_without_profiles(state_store: StateStore) -> None:
    r = Rec()
    out = apply(state_store, [
        r.item("dish", "d1", "set", {"name": "noodles", "price": 28}),
        r.item("dish", "d2", "set", {"name": "rice"}),
        r.item("dish", "d1", "set", {"name": "beef noodles"}),
        r.item("dish", "d2", "delete"),
        r.item(None, "d3", "set", {"x": 1}),
        r.item("dish", "d4", "upsert", {"x": 1}),
    ])
    assert out.profile_ids == [None] * 6 and out.profiles == []
    assert error_fields(out) == [(4, "item_type"), (5, "op")]
    items = {i.item_id: i.properties for i in out.items}
    assert items == {"d1": {"name": "beef noodles"}, "d2": None}
    with state_store.transaction() as tx:
        rows = tx.fetchall("SELECT item_id, properties FROM items")
    assert [r[0] for r in rows] == ["d1"]


def test_bad_records_do_not_lose_good_ones(state_store: StateStore) -> None:
    r = Rec()
    out = apply(state_store, [
        r.track({"anonymous_id": "a1"}),
        r.track({}),
        r.track({"anonymous_id": "undefined"}),
        r.profile({"anonymous_id": "a1"}, "increment", {"n": "x", "m": 2}),
        r.track({"anonymous_id": "a2"}),
    ])
    assert [i for i, _ in out.errors] == [1, 2, 3]
    assert out.profile_ids[1] is None and out.profile_ids[2] is None
    assert None not in (out.profile_ids[0], out.profile_ids[3], out.profile_ids[4])
    assert next(p for p in out.profiles if p.user_id == out.profile_ids[0]).properties == {"m": 2}


def test_rollback_leaves_no_trace_in_the_cache(state_store: StateStore) -> None:
    r = Rec()
    with pytest.raises(RuntimeError), state_store.transaction() as tx:
        apply_records(tx, [r.track({"login_id": "ghost"})], POLICY)
        raise RuntimeError("the event store failed")
    assert owner(state_store, "ghost") is None
    out = apply(state_store, [r.track({"login_id": "ghost"})])
    assert out.profile_ids[0] is not None
    assert owner(state_store, "ghost") == out.profile_ids[0]


def test_merges_in_one_process_update_the_cache(state_store: StateStore) -> None:
    r = Rec()
    apply(state_store, [r.track({"login_id": "u1"}), r.track({"anonymous_id": "a1"})])
    p_login, p_anon = owner(state_store, "u1"), owner(state_store, "a1")
    apply(state_store, [r.link({"login_id": "u1", "anonymous_id": "a1"})])
    # Both identities are cached from before; the next event must see the merge.
    out = apply(state_store, [r.track({"anonymous_id": "a1"})])
    assert out.profile_ids == [min(p_login or 0, p_anon or 0)]
    apply(state_store, [r.unlink({"anonymous_id": "a1"})])
    out = apply(state_store, [r.track({"anonymous_id": "a1"}), r.track({"login_id": "u1"})])
    assert out.profile_ids == [p_anon, p_login]


def test_resolve_records_repeats_the_answer_without_writing(state_store: StateStore) -> None:
    r = Rec()
    apply(state_store, [r.track({"anonymous_id": "a0"})])
    batch = [
        r.track({"anonymous_id": "a1"}),
        r.track({"login_id": "u1"}),
        r.link({"login_id": "u1", "anonymous_id": "a1"}),
        r.profile({"login_id": "u1"}, "set", {"x": 1}),
        r.item("dish", "d1", "set", {"n": 1}),
        r.track({"anonymous_id": "null"}),
        r.link({"login_id": "u2", "anonymous_id": "a1"}),
        r.track({"anonymous_id": "a0"}),
    ]
    applied = apply(state_store, batch)
    with state_store.transaction() as tx:
        before = tx.fetchall("SELECT user_id, event_count, properties FROM profiles ORDER BY 1")
        again = resolve_records(tx, batch)
        after = tx.fetchall("SELECT user_id, event_count, properties FROM profiles ORDER BY 1")
    assert [tuple(x) for x in before] == [tuple(x) for x in after]
    assert again.profile_ids == applied.profile_ids
    assert again.user_map == applied.user_map
    assert {(p.user_id, p.event_count, p.deleted) for p in again.profiles} >= {
        (p.user_id, p.event_count, p.deleted) for p in applied.profiles}
    assert {(i.id_type, i.id_value, i.user_id) for i in again.identities} >= {
        (i.id_type, i.id_value, i.user_id) for i in applied.identities}
    assert [(i.item_id, i.properties) for i in again.items] == [("d1", {"n": 1})]
    assert [i for i, _ in again.errors] == [5]


def test_records_of_several_projects_in_one_batch(state_store: StateStore) -> None:
    r = Rec()
    with state_store.transaction() as tx:
        tx.create_project("b")
    out = apply(state_store, [r.track({"login_id": "u1"}), r.track({"login_id": "u1"}, project="b")])
    assert out.profile_ids[0] != out.profile_ids[1]
    assert {p.project for p in out.profiles} == {"default", "b"}


def test_known_people_cost_a_fixed_number_of_statements(tmp_path: Path) -> None:
    store = open_state_store("", tmp_path)
    r = Rec()
    try:
        apply(store, [r.track({"anonymous_id": f"a{n}"}) for n in range(500)])
        statements: list[str] = []
        with store.transaction() as tx:
            tx.conn.set_trace_callback(statements.append)
            out = apply_records(tx, [r.track({"anonymous_id": f"a{n % 500}"})
                                     for n in range(5000)], POLICY)
            tx.conn.set_trace_callback(None)
        assert None not in out.profile_ids
        # No statement per event: counters are written once, rows read once.
        assert len(statements) <= 6, statements
    finally:
        store.close()


def test_events_restating_a_known_link_cost_a_fixed_number_of_statements(tmp_path: Path) -> None:
    # After login the JS SDK sends the login and cookie ids with every event: a link
    # each time, but one that changes nothing once the two are one person.
    store = open_state_store("", tmp_path)
    r = Rec()
    try:
        first = apply(store, [r.link({"login_id": f"u{n}", "anonymous_id": f"c{n}"})
                              for n in range(200)])
        statements: list[str] = []
        with store.transaction() as tx:
            tx.conn.set_trace_callback(statements.append)
            out = apply_records(tx, [
                r.track({"login_id": f"u{n % 200}", "anonymous_id": f"c{n % 200}"}, link=True)
                for n in range(2000)], POLICY)
            tx.conn.set_trace_callback(None)
        assert out.errors == []
        assert out.profile_ids == [first.profile_ids[n % 200] for n in range(2000)]
        assert {p.event_count for p in out.profiles} == {10}
        assert len(statements) <= 6, statements
    finally:
        store.close()
