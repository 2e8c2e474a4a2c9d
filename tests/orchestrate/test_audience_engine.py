"""The audience engine on the real state store (SQLite and PostgreSQL) and the real
event store: batch computation, real time, boundary flips, signals."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_audience_batch import BASE, conditions, profile_values
from test_audience_support import STATE_BACKENDS, Event, StoreEvents, ref_member, state_store

from touchline.clock import VirtualClock
from touchline.errors import InvalidInput
from touchline.orchestrate.audience_engine import AudienceEngine, Signal
from touchline.orchestrate.audience_model import parse_condition
from touchline.orchestrate.segments import (
    get_segment,
    history,
    member_ids,
    save_static_segment,
    signals_after,
)

T0 = 1_700_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
P = "default"


class World:
    def __init__(self, backend: str, tmp: Path) -> None:
        self.clock = VirtualClock(T0)
        self._cm = state_store(backend, tmp, self.clock)
        self.state = self._cm.__enter__()
        self.events = StoreEvents(tmp / "events.duckdb")
        self.engine = AudienceEngine(self.state, self.events.reader, self.clock)
        self.signals: list[Signal] = []
        self.engine.subscribe(self.signals.extend)

    def close(self) -> None:
        self.engine.close()
        self.events.close()
        self._cm.__exit__(None, None, None)

    def members(self, name: str) -> set[int]:
        with self.state.transaction() as tx:
            return member_ids(tx, P, name)

    def ingest(self, *events: tuple[int, str, int, dict[str, Any]]) -> list[Signal]:
        for u, ev, t, props in events:
            self.events.add_event(u, ev, t, props)
        return self.engine.on_events(self.events.commit())


@pytest.fixture(params=STATE_BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    w = World(request.param, tmp_path)
    yield w
    w.close()


def test_time_boundary_flips_at_the_exact_moment(world: World) -> None:
    for u in (1, 2):
        world.events.add_profile(u, {})
    world.events.commit()
    world.engine.save(P, {"name": "recent", "conditions": {"performed": "order", "within": "1h"}})
    world.engine.save(P, {"name": "dormant",
                          "conditions": {"not_performed": "order", "within": "7d"}})
    assert world.members("recent") == set()
    assert world.members("dormant") == {1, 2}

    world.clock.set(T0 + 10_000)
    got = world.ingest((1, "order", T0 + 5_000, {}))
    assert sorted((s.segment, s.user_id, s.change, s.at_ms) for s in got) == [
        ("dormant", 1, "exit", T0 + 10_000), ("recent", 1, "enter", T0 + 10_000)]
    assert world.engine.next_due_ms() == T0 + 5_000 + HOUR

    world.clock.set(T0 + 5_000 + HOUR - 1)
    assert world.engine.run_due() == []
    assert world.members("recent") == {1}
    world.clock.set(T0 + 5_000 + HOUR)
    assert world.engine.run_due() == [Signal(P, "recent", 1, "exit", T0 + 5_000 + HOUR)]
    assert world.members("recent") == set()
    assert world.engine.next_due_ms() == T0 + 5_000 + 7 * DAY

    # The worker was late by a minute: the flip is still recorded at its moment.
    world.clock.set(T0 + 5_000 + 7 * DAY + 60_000)
    assert world.engine.run_due() == [Signal(P, "dormant", 1, "enter", T0 + 5_000 + 7 * DAY)]
    assert world.members("dormant") == {1, 2}
    assert world.engine.next_due_ms() is None
    with world.state.transaction() as tx:
        rows = [(c.change, c.at_ms) for c in history(tx, P, "dormant", 1)]
        assert rows == [("enter", T0), ("exit", T0 + 10_000), ("enter", T0 + 5_000 + 7 * DAY)]
        assert len(signals_after(tx, 0)) == 6
        assert get_segment(tx, P, "dormant").member_count == 2
    assert len(world.signals) == 2 + 2 + 1 + 1


def test_segment_on_segment_and_static_lists(world: World) -> None:
    for u in range(1, 6):
        world.events.add_profile(u, {"city": "SH" if u % 2 else "BJ"})
    world.events.commit()
    with world.state.transaction() as tx:
        save_static_segment(tx, P, "vips", [1, 2], {"csv": "vips.csv"}, now_ms=T0)
    world.engine.save(P, {"name": "buyers", "conditions": {"performed": "order"}})
    world.engine.save(P, {"name": "sh buyers or vips", "conditions": {"any": [
        {"all": [{"in_segment": "buyers"}, {"trait": "city", "value": "SH"}]},
        {"in_segment": "vips"}]}})
    world.engine.save(P, {"name": "outer", "conditions": {"in_segment": "sh buyers or vips"}})
    assert world.members("sh buyers or vips") == {1, 2}
    got = world.ingest((3, "order", T0, {}), (4, "order", T0, {}))
    assert {(s.segment, s.user_id) for s in got} == {
        ("buyers", 3), ("buyers", 4), ("sh buyers or vips", 3), ("outer", 3)}
    with world.state.transaction() as tx:
        save_static_segment(tx, P, "vips", [5], {"csv": "vips2.csv"}, now_ms=T0)
    got = world.engine.compute_dependents(P, "vips")
    assert {(s.segment, s.user_id, s.change) for s in got} == {
        (seg, u, change) for seg in ("sh buyers or vips", "outer")
        for u, change in ((1, "exit"), (2, "exit"), (5, "enter"))}
    assert world.members("sh buyers or vips") == world.members("outer") == {3, 5}


def test_definitions_are_checked_before_saving(world: World) -> None:
    with pytest.raises(InvalidInput) as err:
        world.engine.save(P, {"name": "x", "conditions": {"all": [
            {"trait": "a", "value": 1}, {"in_segment": "nope"}]}})
    assert err.value.field == "conditions.all[1]"
    world.engine.save(P, {"name": "a", "conditions": {"trait": "x", "op": "is_set"}})
    world.engine.save(P, {"name": "b", "conditions": {"in_segment": "a"}})
    with pytest.raises(InvalidInput) as err:
        world.engine.save(P, {"name": "a", "conditions": {"not_in_segment": "b"}})
    assert "cycle" in err.value.rule
    with pytest.raises(InvalidInput) as err:
        world.engine.save(P, {"name": "c", "conditions": {"rfm_layer": "top", "spec": {}}})
    assert err.value.field == "rfm_layer"
    with world.state.transaction() as tx:
        assert get_segment(tx, P, "a").definition == {
            "name": "a", "description": "", "conditions": {"trait": "x", "op": "is_set"}}


def test_preview_counts_without_saving(world: World) -> None:
    for u in range(1, 30):
        world.events.add_profile(u, {"age": u})
    world.events.commit()
    p = world.engine.preview(P, {"conditions": {"trait": "age", "op": ">", "value": 20}}, sample=3)
    assert (p.count, p.sample, p.at_ms) == (9, [21, 22, 23], T0)
    with world.state.transaction() as tx:
        assert tx.fetchall("SELECT name FROM segments") == []


# ------------------------------------------------------- real time equals batch

DEFINITIONS = [
    {"performed": "order", "op": ">=", "value": 2, "within": "2h"},
    {"all": [{"not_performed": "order", "within": "3h"}, {"trait": "vip", "value": True}]},
    {"performed": "order", "aggregate": {"sum": "amount"}, "op": ">=", "value": 300,
     "within": "1d", "where": [{"property": "channel", "value": "app"}]},
    {"any": [{"first_performed": "view", "within": "1h"},
             {"last_performed": "order", "more_than": "2h"}]},
    {"not": {"performed": "view", "op": "between", "value": [1, 2], "within": "90m"}},
]

steps = st.lists(
    st.tuples(
        st.integers(0, 4 * HOUR),  # how far the clock moves before the batch
        st.lists(st.tuples(st.integers(1, 4), st.sampled_from(["order", "view"]),
                           st.integers(-3 * HOUR, HOUR // 2),  # event time relative to now
                           st.fixed_dictionaries({}, optional={
                               "amount": st.sampled_from([100, 200, 350]),
                               "channel": st.sampled_from(["app", "sms"])})),
                 max_size=4),
    ),
    min_size=1, max_size=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.integers(0, 8 * HOUR))
def test_real_time_membership_equals_batch(script: list[Any], tail: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = World("sqlite", Path(tmp))
        try:
            profiles = {1: {"vip": True}, 2: {}, 3: {"vip": True}, 4: {"vip": False}}
            for u, props in profiles.items():
                w.events.add_profile(u, props)
            w.events.commit()
            for i, d in enumerate(DEFINITIONS):
                w.engine.save(P, {"name": f"s{i}", "conditions": d})
            seen: list[Event] = []
            for advance, batch in [*script, (tail, [])]:
                target = w.clock.now_ms() + advance
                # The boundary worker runs at every due time on the way.
                while (due := w.engine.next_due_ms()) is not None and due <= target:
                    w.clock.set(due)
                    w.engine.run_due()
                w.clock.set(target)
                if batch:
                    evs = [(u, ev, target + dt, props) for u, ev, dt, props in batch]
                    seen += evs
                    w.ingest(*evs)
            now = w.clock.now_ms()
            for i, d in enumerate(DEFINITIONS):
                cond = parse_condition(d)
                want = {u for u, props in profiles.items()
                        if ref_member(cond, u, props, seen, now)}
                assert w.members(f"s{i}") == want, (i, d)
                # A full recomputation finds nothing to change.
                assert w.engine.compute(P, f"s{i}") == []
        finally:
            w.close()


@pytest.mark.postgres
def test_two_workers_on_postgres_never_flip_a_user_twice(tmp_path: Path) -> None:
    import threading

    from test_audience_support import pg_schema_url

    from touchline.orchestrate import audience_hooks
    from touchline.store.state import open_state_store

    clock = VirtualClock(T0)
    with pg_schema_url() as url:
        stores = [open_state_store(url, tmp_path, clock=clock) for _ in range(2)]
        events = StoreEvents(tmp_path / "events.duckdb")
        try:
            for name, ddl in audience_hooks.state_schema().items():
                stores[0].ensure_schema(name, ddl)
            engines = [AudienceEngine(s, events.reader, clock) for s in stores]
            users = range(1, 301)
            for u in users:
                events.add_profile(u, {})
                events.add_event(u, "order", T0 - HOUR // 2 + u, {})
            events.commit()
            engines[0].save(P, {"name": "recent", "conditions": {"performed": "order",
                                                                 "within": "1h"}})
            clock.set(T0 + HOUR)
            results: list[list[Signal]] = [[], []]

            def work(i: int) -> None:
                while batch := engines[i].run_due(limit=20):
                    results[i].extend(batch)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            flipped = [s.user_id for r in results for s in r]
            assert sorted(flipped) == list(users)
            with stores[0].transaction() as tx:
                exits = tx.fetchall("SELECT user_id, COUNT(*) FROM segment_history "
                                    "WHERE change = 'exit' GROUP BY user_id")
                assert sorted(exits) == [(u, 1) for u in users]
                assert member_ids(tx, P, "recent") == set()
                assert get_segment(tx, P, "recent").member_count == 0
        finally:
            for e in engines:
                e.close()
            events.close()
            for s in stores:
                s.close()


def test_a_broken_segment_does_not_stop_the_others(world: World) -> None:
    from touchline.errors import Conflict
    from touchline.orchestrate.segments import delete_segment

    world.events.add_profile(1, {})
    world.events.commit()
    with world.state.transaction() as tx:
        save_static_segment(tx, P, "list", [1], {}, now_ms=T0)
    world.engine.save(P, {"name": "uses list", "conditions": {"in_segment": "list"}})
    world.engine.save(P, {"name": "buyers", "conditions": {"performed": "order"}})
    with world.state.transaction() as tx, pytest.raises(Conflict):
        delete_segment(tx, P, "list")
    # Removed behind the engine's back (a raw delete): "uses list" cannot resolve.
    with world.state.transaction() as tx:
        tx.execute("DELETE FROM segments WHERE name = 'list'")
        tx.execute("UPDATE segments SET updated_ms = updated_ms + 1 WHERE name = 'uses list'")
    got = world.ingest((1, "order", T0, {}))
    assert [(s.segment, s.change) for s in got] == [("buyers", "enter")]


def test_realtime_worker_merges_batches_off_the_ingest_thread(world: World) -> None:
    from touchline.orchestrate.audience_worker import RealtimeWorker

    for u in range(1, 5):
        world.events.add_profile(u, {})
    world.events.commit()
    world.engine.save(P, {"name": "twice", "conditions": {"performed": "order", "value": 2}})
    worker = RealtimeWorker(world.engine)
    worker.start()
    try:
        for u in (1, 2, 1, 3, 3):
            world.events.add_event(u, "order", T0, {})
            worker.submit(world.events.commit())
        assert worker.wait_idle(10)
        assert world.members("twice") == {1, 3}
        world.events.add_event(2, "order", T0, {})
        worker.submit(world.events.commit())
    finally:
        worker.stop()  # drains what is queued first
    assert world.members("twice") == {1, 2, 3}
    assert sorted(s.user_id for s in world.signals) == [1, 2, 3]


def test_boundary_worker_flips_on_time_in_real_time(tmp_path: Path) -> None:
    import threading

    from touchline.clock import SystemClock
    from touchline.orchestrate.audience_worker import BoundaryWorker

    clock = SystemClock()
    with state_store("sqlite", tmp_path, clock) as state:
        events = StoreEvents(tmp_path / "events.duckdb")
        engine = AudienceEngine(state, events.reader, clock)
        seen: list[tuple[Signal, int]] = []
        flipped = threading.Event()

        def on_signals(signals: Any) -> None:
            seen.extend((s, clock.now_ms()) for s in signals)
            if any(s.change == "exit" for s in signals):
                flipped.set()

        engine.subscribe(on_signals)
        worker = BoundaryWorker(engine, clock, max_wait_s=5)
        worker.start()
        try:
            events.add_profile(1, {})
            events.commit()
            engine.save(P, {"name": "just now", "conditions": {"performed": "order",
                                                               "within": "400ms"}})
            t = clock.now_ms()
            events.add_event(1, "order", t, {})
            engine.on_events(events.commit())
            # The worker was sleeping (up to 5 s); the new boundary must wake it.
            assert flipped.wait(3)
            exit_signal, delivered = seen[-1]
            assert exit_signal == Signal(P, "just now", 1, "exit", t + 400)
            assert 0 <= delivered - (t + 400) < 250
        finally:
            worker.stop()
            engine.close()
            events.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_real_time_equals_batch_for_random_definitions(data: st.DataObject) -> None:
    definition = data.draw(conditions)
    profiles = {u: {k: v for k, v in data.draw(profile_values).items() if v is not None}
                for u in range(1, 5)}
    script = data.draw(steps)
    with tempfile.TemporaryDirectory() as tmp:
        w = World("sqlite", Path(tmp))
        try:
            for u, props in profiles.items():
                w.events.add_profile(u, props)
            w.events.commit()
            w.engine.save(P, {"name": "base", "conditions": {"any": [
                {"trait": "vip", "value": True},
                {"performed": "view", "op": ">=", "value": 2, "within": "1d"}]}})
            w.engine.save(P, {"name": "s", "conditions": definition})
            seen: list[Event] = []
            for advance, batch in script:
                target = w.clock.now_ms() + advance
                while (due := w.engine.next_due_ms()) is not None and due <= target:
                    w.clock.set(due)
                    w.engine.run_due()
                w.clock.set(target)
                if batch:
                    evs = [(u, ev, target + dt, props) for u, ev, dt, props in batch]
                    seen += evs
                    w.ingest(*evs)
            now = w.clock.now_ms()
            cond = parse_condition(definition)
            want = {u for u, props in profiles.items()
                    if ref_member(cond, u, props, seen, now, {"base": BASE})}
            assert w.members("s") == want
            assert w.engine.compute(P, "s") == []
        finally:
            w.close()
