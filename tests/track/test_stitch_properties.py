"""Property tests: random link/unlink/track sequences keep the identity graph sound."""

from __future__ import annotations

import itertools
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The shared state-store fixtures (both backends) live with the store's tests.
from store.conftest import *  # noqa: F403
from store.conftest import Rec
from touchline.store.state import StateStore
from touchline.track.records import Record
from touchline.track.stitch import StitchPolicy, apply_records, resolve_records

LOGINS = [("login_id", f"u{n}") for n in range(3)]
ANONS = [("anonymous_id", f"a{n}") for n in range(4)]
DEVICES = [("device_id", f"d{n}") for n in range(2)]
IDS = LOGINS + ANONS + DEVICES

identity = st.sampled_from(IDS)
op = st.one_of(
    st.tuples(st.just("track"), identity),
    st.tuples(st.just("link"), identity, identity),
    st.tuples(st.just("link"), st.sampled_from(LOGINS), st.sampled_from(ANONS + DEVICES)),
    st.tuples(st.just("unlink"), identity),
    st.tuples(st.just("profile"), identity),
)
batches = st.lists(st.lists(op, min_size=1, max_size=12), min_size=1, max_size=5)

_projects = itertools.count()


def _records(rec: Rec, batch: list[tuple[str, ...]]) -> list[Record]:
    out = []
    for step in batch:
        kind = step[0]
        if kind == "track":
            out.append(rec.track(dict([step[1]])))  # type: ignore[list-item]
        elif kind == "link":
            ids = dict([step[1], step[2]])  # type: ignore[list-item]
            out.append(rec.link(ids))
        elif kind == "unlink":
            out.append(rec.unlink(dict([step[1]])))  # type: ignore[list-item]
        else:
            out.append(rec.profile(dict([step[1]]), "increment", {"n": 1}))  # type: ignore[list-item]
    return out


def _check_graph(store: StateStore, project: str) -> None:
    with store.transaction(read_only=True) as tx:
        profiles = {int(u): (int(s), None if p is None else int(p)) for u, s, p in tx.fetchall(
            "SELECT user_id, survivor, parent FROM profiles WHERE project = ?", (project,))}
        idents = tx.fetchall(
            "SELECT id_type, id_value, user_id FROM identities WHERE project = ?", (project,))
    # Survivors are roots; every survivor chain ends at a root that is its own survivor.
    for uid, (survivor, parent) in profiles.items():
        assert profiles[survivor][0] == survivor, (uid, survivor)
        assert (parent is None) == (survivor == uid), (uid, survivor, parent)
        if parent is not None:
            assert profiles[parent][0] == survivor  # same tree
            assert parent < uid or profiles[parent][0] == survivor
        assert survivor <= uid  # the oldest profile survives
    # Every identity belongs to exactly one live person (the key is unique by schema).
    logins: dict[int, set[str]] = defaultdict(set)
    for id_type, value, home in idents:
        person = profiles[int(home)][0]
        if id_type == "login_id":
            logins[person].add(value)
    assert all(len(v) == 1 for v in logins.values()), dict(logins)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=batches)
def test_random_sequences_keep_the_graph_sound(state_store: StateStore, plan: list) -> None:
    project = f"p{next(_projects)}"
    with state_store.transaction() as tx:
        tx.create_project(project)
    rec = Rec(project)
    policy = StitchPolicy(max_identities_per_type=3, max_merges_per_profile=4)
    for batch in plan:
        records = _records(rec, batch)
        with state_store.transaction() as tx:
            applied = apply_records(tx, records, policy)
        assert len(applied.profile_ids) == len(records)
        _check_graph(state_store, project)
        # Replaying the batch read-only answers the same people and writes nothing.
        with state_store.transaction() as tx:
            before = tx.fetchall(
                "SELECT user_id, survivor, event_count, properties FROM profiles "
                "WHERE project = ? ORDER BY user_id", (project,))
            again = resolve_records(tx, records)
            after = tx.fetchall(
                "SELECT user_id, survivor, event_count, properties FROM profiles "
                "WHERE project = ? ORDER BY user_id", (project,))
        assert [tuple(r) for r in before] == [tuple(r) for r in after]
        assert again.profile_ids == applied.profile_ids
        # Every track record of a usable identity has a person.
        for r, pid in zip(records, applied.profile_ids, strict=True):
            if r.kind == "track":
                assert pid is not None
