"""The identity cache and the bulk path for file imports."""

from __future__ import annotations

import pytest

# The shared state-store fixtures (both backends) live with the store's tests.
from store.conftest import *  # noqa: F403
from store.conftest import Rec
from touchline.errors import InvalidInput
from touchline.store.state import StateStore
from touchline.track.identity import IdentityCache
from touchline.track.stitch import (
    StitchPolicy,
    apply_records,
    ensure_profiles,
    lookup_profile,
    touch_profiles,
)

K1, K2, K3 = ("p", "login_id", "u1"), ("p", "login_id", "u2"), ("p", "login_id", "u3")


def test_cache_evicts_the_least_recently_used() -> None:
    cache = IdentityCache(max_entries=2)
    cache.publish({K1: 1, K2: 2}, (), {}, False, cache.epoch)
    assert cache.get_many([K1]) == {K1: 1}  # K1 is now the most recent
    cache.publish({K3: 3}, (), {}, False, cache.epoch)
    assert cache.get_many([K1, K2, K3]) == {K1: 1, K3: 3}
    assert len(cache) == 2


def test_cache_follows_merges_and_forgets_removals() -> None:
    cache = IdentityCache()
    cache.publish({K1: 5, K2: 6}, (), {}, False, cache.epoch)
    cache.publish({}, (), {6: 5}, False, cache.epoch)
    cache.publish({}, (), {5: 1}, False, cache.epoch)
    assert cache.get_many([K1, K2]) == {K1: 1, K2: 1}
    cache.publish({}, [K1], {}, False, cache.epoch)
    assert cache.get_many([K1]) == {}
    cache.publish({}, (), {}, True, cache.epoch)  # a split clears it
    assert cache.get_many([K2]) == {}


def test_cache_drops_entries_read_before_a_concurrent_change() -> None:
    cache = IdentityCache()
    seen = cache.epoch
    cache.publish({}, (), {7: 3}, False, cache.epoch)  # another transaction merged
    cache.publish({K1: 7}, (), {}, False, seen)  # a reader from before that merge
    assert cache.get_many([K1]) == {}
    cache.publish({K1: 3}, (), {}, False, cache.epoch)
    assert cache.get_many([K1]) == {K1: 3}


def test_cache_clears_when_redirects_pile_up() -> None:
    cache = IdentityCache(max_redirects=3)
    cache.publish({K1: 1}, (), {}, False, cache.epoch)
    cache.publish({}, (), {10: 1, 11: 1, 12: 1, 13: 1}, False, cache.epoch)
    assert len(cache) == 0


def test_ensure_profiles_creates_and_finds(state_store: StateStore) -> None:
    r = Rec()
    with state_store.transaction() as tx:
        out = apply_records(tx, [r.track({"anonymous_id": "known"}),
                                 r.track({"login_id": "u1"}),
                                 r.link({"login_id": "u1", "anonymous_id": "merged"})],
                            StitchPolicy())
    known = out.profile_ids[0]
    with state_store.transaction() as tx:
        ids = ensure_profiles(tx, "default", "anonymous_id",
                              ["n1", "known", "n2", "n1", "merged"],
                              seen_ms=[300, 1, 200, 100, 5])
    assert ids[1] == known and ids[4] == out.profile_ids[1]
    assert ids[0] == ids[3] and len({ids[0], ids[2], known}) == 3
    assert min(ids[0], ids[2]) > max(x for x in out.profile_ids if x is not None)
    with state_store.transaction() as tx:
        view = lookup_profile(tx, "default", "anonymous_id:n1")
        assert view is not None and view.user_id == ids[0]
        assert (view.first_seen_ms, view.last_seen_ms, view.event_count) == (100, 300, 0)
        # Calling again changes nothing and answers the same.
        assert ensure_profiles(tx, "default", "anonymous_id", ["n2", "n1"],
                               seen_ms=[0, 0]) == [ids[2], ids[0]]
        touch_profiles(tx, "default", [(ids[0], 2, 50, 400)])
        view = lookup_profile(tx, "default", "n1")
    assert view is not None and (view.first_seen_ms, view.last_seen_ms, view.event_count) == (
        50, 400, 2)
    # New people are visible to the stitching path in the same process.
    with state_store.transaction() as tx:
        again = apply_records(tx, [r.track({"anonymous_id": "n2"})], StitchPolicy())
    assert again.profile_ids == [ids[2]]


def test_ensure_profiles_refuses_junk_before_writing(state_store: StateStore) -> None:
    with pytest.raises(InvalidInput) as err, state_store.transaction() as tx:
        ensure_profiles(tx, "default", "anonymous_id", ["ok1", " NULL ", "ok2"], seen_ms=[1, 2, 3])
    assert err.value.index == 1 and err.value.field == "values[1]"
    with pytest.raises(InvalidInput), state_store.transaction() as tx:
        ensure_profiles(tx, "default", "anonymous_id", ["ok1"], seen_ms=[])
    with state_store.transaction() as tx:
        assert lookup_profile(tx, "default", "ok1") is None
        assert ensure_profiles(tx, "default", "anonymous_id", [], seen_ms=[]) == []


def test_ensure_profiles_in_bulk(state_store: StateStore) -> None:
    values = [f"v{n % 3000}" for n in range(6000)]
    with state_store.transaction() as tx:
        ids = ensure_profiles(tx, "default", "cookie_id", values, seen_ms=list(range(6000)))
    assert len(set(ids)) == 3000 and ids[:3000] == ids[3000:]
    with state_store.transaction() as tx:
        n = tx.fetchone("SELECT count(*) FROM identities WHERE id_type = 'cookie_id'")[0]
        view = lookup_profile(tx, "default", "v7")
    assert n == 3000
    assert view is not None and (view.first_seen_ms, view.last_seen_ms) == (7, 3007)
