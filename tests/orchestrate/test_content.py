"""Content decision: rules, stable experiments and the Thompson-sampling bandit."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.errors import InvalidInput
from touchline.orchestrate.bandit import (
    BANDIT_SCHEMA,
    BANDIT_SCHEMA_NAME,
    ArmCounts,
    MemoryBanditStore,
    StateBanditStore,
    ThompsonBandit,
)
from touchline.orchestrate.content import (
    ContentDecision,
    choose_by_experiment,
    choose_variant,
    stable_unit,
)
from touchline.store.state import StateStore, open_state_store

DEF: dict[str, Any] = {
    "strategy": "rules",
    "variants": [
        {"id": "plain", "subject": "Weekend set", "body": "Hi {{ profile.name | default: 'there' }}"},
        {"id": "discount", "subject": "20% off", "body": "Code {{ journey.coupon }}", "weight": 1},
    ],
    "rules": [{"segment": "discount_sensitive", "variant": "discount"}],
    "default": "plain",
}


def test_from_dict_and_rules() -> None:
    d = ContentDecision.from_dict(DEF)
    assert [v.id for v in d.variants] == ["plain", "discount"]
    assert d.variants[1].parts == {"subject": "20% off", "body": "Code {{ journey.coupon }}"}
    hit = choose_variant(d, user_id="u1", journey_id="j", segments={"discount_sensitive"})
    assert (hit.variant.id, hit.strategy) == ("discount", "rules")
    miss = choose_variant(d, user_id="u1", journey_id="j", segments={"students"})
    assert (miss.variant.id, miss.reason) == ("plain", "no rule matched")


@pytest.mark.parametrize(("change", "field"), [
    ({"strategy": "magic"}, "content.strategy"),
    ({"variants": []}, "content.variants"),
    ({"variants": [{"id": "a"}, {"id": "a"}]}, "content.variants"),
    ({"variants": [{"id": "a", "weight": 0}]}, "content.variants[0].weight"),
    ({"variants": [{"id": "a", "body": 3}]}, "content.variants[0].body"),
    ({"rules": [{"segment": "s", "variant": "nope"}]}, "content.rules[0].variant"),
    ({"rules": []}, "content.rules"),
    ({"default": "nope"}, "content.default"),
])
def test_invalid_definitions_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        ContentDecision.from_dict({**DEF, **change})
    assert err.value.field == field


def test_check_finds_template_problems_with_their_variant() -> None:
    raw = {**DEF, "variants": [*DEF["variants"], {"id": "bad", "body": "{{ order.id | shout }}"}]}
    problems = ContentDecision.from_dict(raw, field="nodes.rescue.content").check(
        field="nodes.rescue.content")
    assert {(p.field, p.rule) for p in problems} == {
        ("nodes.rescue.content.variants[2].body", "unknown filter"),
        ("nodes.rescue.content.variants[2].body", "unknown variable"),
    }
    assert ContentDecision.from_dict(DEF).check() == []


def test_experiment_is_stable_and_follows_the_weights() -> None:
    d = ContentDecision.from_dict({"strategy": "experiment", "variants": [
        {"id": "a", "body": "A", "weight": 3}, {"id": "b", "body": "B", "weight": 1}]})
    picks = [choose_variant(d, user_id=f"u{i}", journey_id="win-back").variant.id
             for i in range(4000)]
    again = [choose_variant(d, user_id=f"u{i}", journey_id="win-back").variant.id
             for i in range(4000)]
    assert picks == again
    share = Counter(picks)["a"] / len(picks)
    assert 0.72 < share < 0.78
    # Another journey splits users independently.
    other = [choose_by_experiment(d.variants, f"u{i}", "renewal").id for i in range(4000)]
    assert other != picks


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.text(max_size=10), min_size=1, max_size=4))
def test_stable_unit_is_in_range_and_deterministic(parts: list[str]) -> None:
    x = stable_unit(*parts)
    assert 0 <= x < 1 and x == stable_unit(*parts)


def test_bandit_learns_the_better_arm() -> None:
    store = MemoryBanditStore()
    bandit = ThompsonBandit(store, rng=np.random.default_rng(7))
    truth = {"plain": 0.05, "discount": 0.25}
    world = np.random.default_rng(11)
    picks: list[str] = []
    for _ in range(1500):
        arm = bandit.choose("j:n", ["plain", "discount"])
        bandit.record_send("j:n", arm)
        if world.random() < truth[arm]:
            bandit.record_conversion("j:n", arm)
        picks.append(arm)
    late = Counter(picks[-500:])
    assert late["discount"] > 450
    counts = store.counts("j:n")
    assert counts["discount"].sends + counts["plain"].sends == 1500
    assert 0.18 < counts["discount"].conversions / counts["discount"].sends < 0.32
    best = bandit.probability_best("j:n", ["plain", "discount"])
    assert best["discount"] > 0.99


def test_bandit_strategy_goes_through_the_bandit() -> None:
    store = MemoryBanditStore()
    store.add("j:n", "discount", sends=1000, conversions=400)
    store.add("j:n", "plain", sends=1000, conversions=10)
    bandit = ThompsonBandit(store, rng=np.random.default_rng(1))
    d = ContentDecision.from_dict({**DEF, "strategy": "bandit"})
    picks = {choose_variant(d, user_id="u", journey_id="j", bandit=bandit,
                            bandit_key="j:n").variant.id for _ in range(50)}
    assert picks == {"discount"}
    with pytest.raises(InvalidInput):
        choose_variant(d, user_id="u", journey_id="j")


def test_bandit_tolerates_conversions_without_sends() -> None:
    store = MemoryBanditStore()
    store.add("k", "a", conversions=5)
    assert store.counts("k") == {"a": ArmCounts(0, 5)}
    assert ThompsonBandit(store).choose("k", ["a", "b"]) in ("a", "b")
    with pytest.raises(InvalidInput):
        ThompsonBandit(store, prior_alpha=0)


PG_DB_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    url, schema = "", ""
    if request.param == "postgres":
        try:
            conn = psycopg.connect(PG_DB_URL, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError as exc:
            pytest.skip(f"PostgreSQL not reachable: {exc}")
        schema = f"bandit_{uuid.uuid4().hex[:12]}"
        with conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{PG_DB_URL}?options=-csearch_path%3D{schema}"
    store = open_state_store(url, tmp_path)
    try:
        store.ensure_schema(BANDIT_SCHEMA_NAME, BANDIT_SCHEMA)
        yield store
    finally:
        store.close()
        if schema:
            with psycopg.connect(PG_DB_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_state_bandit_store_counts_survive_and_concurrent_adds_add_up(
    state: StateStore
) -> None:
    store = StateBanditStore(state)
    assert store.counts("j:n") == {}

    def record(arm: str) -> None:
        for i in range(100):
            store.add("j:n", arm, sends=1, conversions=int(i % 4 == 0))

    threads = [threading.Thread(target=record, args=(arm,)) for arm in ("a", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.counts("j:n") == {"a": ArmCounts(200, 50), "b": ArmCounts(100, 25)}
    assert store.counts("other") == {}
    # A new bandit on the same store picks up where the old one left off.
    store.add("j:n", "b", sends=1000, conversions=600)
    bandit = ThompsonBandit(StateBanditStore(state), rng=np.random.default_rng(3))
    assert {bandit.choose("j:n", ["a", "b"]) for _ in range(30)} == {"b"}
