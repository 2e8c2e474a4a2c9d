"""Content variants in journey message nodes: rules by segment, a stable experiment
split, a Thompson bandit learning from goals, validation paths and per-variant stats.

The real engine and state store (SQLite and PostgreSQL), and delivery through the real
webhook channel to a loopback receiver where sending matters.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest
from servers import ProviderState, serve, webhook_app
from test_journey_support import T0, apply, ev, table_profiles

# Fixtures, re-exported so pytest finds them here.
from test_journey_support import engine as engine
from test_journey_support import jstore as jstore

from touchline.clock import VirtualClock
from touchline.orchestrate import policy as pol
from touchline.orchestrate import segments
from touchline.orchestrate.bandit import ArmCounts, StateBanditStore
from touchline.orchestrate.channels import RetryPolicy, WebhookChannel
from touchline.orchestrate.content import bandit_key, choose_by_experiment, decision_of
from touchline.orchestrate.engine import Engine, stable_fraction
from touchline.orchestrate.model import MessageNode
from touchline.orchestrate.outbox import DeliveryPolicy, Outbox, set_consent
from touchline.orchestrate.stats import journey_stats, user_timeline
from touchline.orchestrate.validate import DefinitionInvalid, parse_journey
from touchline.store.state import StateStore

SECRET = "s3cret"
NOON_SHANGHAI = int(datetime(2023, 11, 15, 4, 0, tzinfo=UTC).timestamp() * 1000)

RULES = """
id: welcome
entry: {type: api}
start: hello
nodes:
  hello:
    type: message
    channel: app
    subject: "Welcome"
    content: {campaign: welcome, kind: base}
    variants:
      - {id: family, body: "A family set for {{ profile.name | default: 'you' }}",
         content: {kind: family}}
      - {id: student, body: "Student combo", subject: "Hey"}
      - {id: standard, body: "Our menu"}
    decision:
      strategy: rules
      rules:
        - {segment: families, variant: family}
        - {segment: students, variant: student}
      default: standard
"""

EXPERIMENT = """
id: split
entry: {type: api}
re_entry: {mode: after_exit}
start: offer
nodes:
  offer:
    type: message
    channel: app
    category: transactional
    variants:
      - {id: a, body: "A", weight: 3}
      - {id: b, body: "B", weight: 1}
    decision: {strategy: experiment, experiment: spring}
goals:
  - {name: ordered, event: {event: pay}, window: 3d}
"""

BANDIT = """
id: learn
entry: {type: api}
start: offer
nodes:
  offer:
    type: message
    channel: app
    category: transactional
    variants:
      - {id: plain, body: "plain offer"}
      - {id: discount, body: "discount offer"}
    decision: {strategy: bandit}
goals:
  - {name: ordered, event: {event: pay}, window: 3d}
"""


@pytest.fixture
def sink() -> Iterator[ProviderState]:
    state = ProviderState(hang_s=1.0)
    with serve(webhook_app(state, SECRET), state):
        yield state


def make_outbox(engine: Engine, sink: ProviderState, **kw: Any) -> Outbox:
    channel = WebhookChannel({"url": sink.base_url + "/hook", "secret": SECRET,
                              "timeout_s": 5}, clock=engine.clock)
    kw.setdefault("retry", RetryPolicy(max_attempts=3, initial_s=0.01, max_backoff_s=0.05))
    kw.setdefault("policy", DeliveryPolicy(caps=()))
    return Outbox(engine.store, engine.clock, {"app": channel}, profiles=table_profiles, **kw)


# One event loop per test: a channel's HTTP client belongs to the loop it first ran on.
_LOOP: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(autouse=True)
def loop() -> Iterator[None]:
    _LOOP.append(asyncio.new_event_loop())
    yield
    _LOOP.pop().close()


def drain(ob: Outbox) -> int:
    total = 0
    while n := _LOOP[-1].run_until_complete(ob.run_once()):
        total += n
    return total


def clock_of(e: Engine) -> VirtualClock:
    assert isinstance(e.clock, VirtualClock)
    return e.clock


def variants_sent(store: StateStore, journey: str) -> dict[int, str]:
    with store.transaction() as tx:
        return {int(r[0]): str(r[1]) for r in tx.fetchall(
            "SELECT user_id, variant FROM journey_outbox WHERE journey_id = ?", (journey,))}


# -- rules ----------------------------------------------------------------------------


def test_rules_pick_by_segment_and_the_variant_travels_with_the_message(
        engine: Engine, sink: ProviderState) -> None:
    clock_of(engine).set(NOON_SHANGHAI)
    apply(engine, RULES)
    with engine.store.transaction() as tx:
        segments.save_static_segment(tx, "default", "families", [1, 3], {"kind": "test"})
        segments.save_static_segment(tx, "default", "students", [2, 3], {"kind": "test"})
    for uid in (1, 2, 3, 4):
        assert engine.enter_api("default", "welcome", uid, {}, key="k")
    # The first matching rule wins (3 is in both); 4 matches none.
    assert variants_sent(engine.store, "welcome") == {
        1: "family", 2: "student", 3: "family", 4: "standard"}
    assert drain(make_outbox(engine, sink)) == 4
    bodies = {m["user_id"]: m for m in (orjson.loads(r.body) for r in sink.requests)}
    # The variant's parts replace the node's; its content keys override the node's.
    assert bodies["1"]["body"] == "A family set for you"
    assert bodies["1"]["subject"] == "Welcome"
    assert bodies["1"]["data"]["kind"] == "family"
    assert bodies["1"]["data"]["campaign"] == "welcome"
    assert (bodies["2"]["subject"], bodies["2"]["body"]) == ("Hey", "Student combo")
    assert bodies["2"]["data"]["kind"] == "base"
    assert bodies["4"]["data"]["journey"]["variant"] == "standard"
    with engine.store.transaction() as tx:
        line = user_timeline(tx, "default", 2, "welcome")
        delivery = tx.fetchall(
            "SELECT d.status, d.detail FROM journey_delivery d JOIN journey_outbox o ON "
            "o.message_id = d.message_id WHERE o.user_id = 2 ORDER BY d.id")
    message = next(x for x in line if x["kind"] == "message")["detail"]
    assert (message["variant"], message["strategy"]) == ("student", "rules")
    assert message["reason"] == "in segment 'students'"
    assert message["delivery"] == "sent"
    assert [s for s, _ in delivery] == ["sending", "sent"]
    assert all(orjson.loads(d)["variant"] == "student" for _, d in delivery)


# -- experiment -----------------------------------------------------------------------


def test_experiment_split_is_stable_and_follows_the_weights(engine: Engine) -> None:
    apply(engine, EXPERIMENT)
    users = list(range(1, 3001))
    assert engine.enter_users("default", "split", users, "s:first") == 3000
    while engine.run_due(5000):
        pass
    first = variants_sent(engine.store, "split")
    assert len(first) == 3000
    share = Counter(first.values())["a"] / 3000
    assert 0.72 < share < 0.78
    # The same hash an experiment node uses, in the same order of arms.
    j = parse_journey(EXPERIMENT)
    node = j.nodes["offer"]
    assert isinstance(node, MessageNode)
    d = decision_of(node, "offer")
    assert all(first[u] == choose_by_experiment(d.variants, u, "split", "spring").id
               for u in users[:200])
    assert all((first[u] == "a") == (stable_fraction(u, "split", "spring") < 0.75)
               for u in users[:200])
    # A returning user (a new entry) gets the same variant again.
    assert engine.enter_users("default", "split", users[:500], "s:second") == 500
    while engine.run_due(5000):
        pass
    with engine.store.transaction() as tx:
        again = {int(r[0]): r[1] for r in tx.fetchall(
            "SELECT user_id, variant FROM journey_outbox WHERE entry_key = 's:second'")}
    assert again == {u: first[u] for u in users[:500]}


# -- bandit ---------------------------------------------------------------------------


def test_bandit_converges_on_the_better_arm_from_goals(
        jstore: StateStore, sink: ProviderState) -> None:
    engine = Engine(jstore, VirtualClock(NOON_SHANGHAI), profiles=table_profiles,
                    rng=np.random.default_rng(7))
    apply(engine, BANDIT)
    ob = make_outbox(engine, sink)
    truth = {"plain": 0.05, "discount": 0.30}
    world = np.random.default_rng(11)
    picks: list[str] = []
    converted: Counter[str] = Counter()
    uid = 0
    for _ in range(30):
        batch = list(range(uid + 1, uid + 41))
        uid += 40
        for u in batch:
            engine.enter_api("default", "learn", u, {}, key="k")
        assert drain(ob) == len(batch)
        got = variants_sent(engine.store, "learn")
        goals = []
        for u in batch:
            picks.append(got[u])
            if world.random() < truth[got[u]]:
                converted[got[u]] += 1
                goals.append(ev(u, "pay", engine.clock.now_ms()))
        engine.handle_events(goals)
        clock_of(engine).advance(60)
    late = Counter(picks[-400:])
    assert late["discount"] > 340, late
    # Trials counted once per message sent, successes once per goal after a send.
    counts = StateBanditStore(jstore).counts(bandit_key("default", "learn", "offer"))
    sent = Counter(picks)
    assert counts == {arm: ArmCounts(sent[arm], converted[arm]) for arm in sent}
    assert sum(sink.seen_keys.values()) == len(sink.seen_keys) == 1200
    with jstore.transaction() as tx:
        s = journey_stats(tx, "default", "learn")
    v = s["nodes"]["offer"]["variants"]
    assert {arm: (v[arm]["sent"], v[arm]["converted"].get("ordered", 0))
            for arm in v} == {arm: (sent[arm], converted[arm]) for arm in sent}
    assert v["discount"]["bandit"]["p_best"] > 0.99
    assert v["discount"]["bandit"]["sends"] == sent["discount"]


def test_bandit_counts_no_trial_for_a_skipped_message_and_no_win_without_a_send(
        jstore: StateStore, sink: ProviderState) -> None:
    engine = Engine(jstore, VirtualClock(NOON_SHANGHAI), profiles=table_profiles,
                    rng=np.random.default_rng(1))
    apply(engine, BANDIT.replace("category: transactional", "category: marketing"))
    with jstore.transaction() as tx:
        set_consent(tx, "default", 2, pol.ConsentState(unsubscribed_all=True), T0)
    for u in (1, 2, 3):
        engine.enter_api("default", "learn", u, {}, key="k")
    # User 3 converts before anything is sent: no arm earns it (and the policy then
    # skips the message, the user having acted on its content already).
    engine.handle_events([ev(3, "pay", engine.clock.now_ms())])
    drain(make_outbox(engine, sink))
    engine.handle_events([ev(u, "pay", engine.clock.now_ms() + 1000) for u in (1, 2)])
    with jstore.transaction() as tx:
        status = {int(r[0]): (r[1], r[2]) for r in tx.fetchall(
            "SELECT user_id, status, variant FROM journey_outbox")}
    assert [status[u][0] for u in (1, 2, 3)] == ["sent", "skipped", "skipped"]
    counts = StateBanditStore(jstore).counts(bandit_key("default", "learn", "offer"))
    assert counts == {status[1][1]: ArmCounts(1, 1)}


def test_a_send_recorded_twice_counts_one_trial(jstore: StateStore,
                                                sink: ProviderState) -> None:
    """A slow worker's lease runs out, another resends and records; then the slow one
    records too. The bandit counts each message once."""
    engine = Engine(jstore, VirtualClock(NOON_SHANGHAI), profiles=table_profiles,
                    rng=np.random.default_rng(2))
    apply(engine, BANDIT)
    for u in range(1, 11):
        engine.enter_api("default", "learn", u, {}, key="k")
    slow, quick = make_outbox(engine, sink), make_outbox(engine, sink)
    run = _LOOP[-1].run_until_complete
    late = run(slow.send(slow.claim()))
    clock_of(engine).advance(60)  # past the 30 s lease
    again = quick.claim()
    assert len(again) == 10
    quick.record(run(quick.send(again)))
    slow.record(late)
    got = Counter(variants_sent(jstore, "learn").values())
    counts = StateBanditStore(jstore).counts(bandit_key("default", "learn", "offer"))
    assert counts == {arm: ArmCounts(n, 0) for arm, n in got.items()}
    assert set(sink.seen_keys.values()) == {2}


def test_decided_once_per_entry_and_node_even_when_the_bandit_changes_its_mind(
        jstore: StateStore) -> None:
    loop = BANDIT.replace("decision: {strategy: bandit}",
                          "decision: {strategy: bandit}\n    next: later").replace(
        "goals:", "  later: {type: delay, duration: 1h, next: again}\n"
                  "  again: {type: jump, to: offer}\ngoals:")
    engine = Engine(jstore, VirtualClock(NOON_SHANGHAI), profiles=table_profiles,
                    rng=np.random.default_rng(3))
    apply(engine, loop)
    key = bandit_key("default", "learn", "offer")
    for u in range(1, 21):
        engine.enter_api("default", "learn", u, {}, key="k")
    first = variants_sent(jstore, "learn")
    assert set(first.values()) == {"plain", "discount"}
    # Now plain looks far better: the bandit has changed its mind...
    store = StateBanditStore(jstore)
    store.add(key, "plain", sends=10_000, conversions=9_000)
    store.add(key, "discount", sends=10_000, conversions=0)
    engine.enter_api("default", "learn", 99, {}, key="k")
    assert variants_sent(jstore, "learn")[99] == "plain"
    clock_of(engine).advance(3600)
    engine.run_due()
    with jstore.transaction() as tx:
        rows = tx.fetchall("SELECT user_id, variant, message_id FROM journey_outbox "
                           "WHERE journey_id = 'learn' AND user_id < 99")
    # ...yet the second visit (a new message) keeps each entry's first variant.
    assert len(rows) == 40 and len({r[2] for r in rows}) == 40
    assert all(r[1] == first[int(r[0])] for r in rows)


# -- validation -----------------------------------------------------------------------


def problems(source: str, **kw: Any) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionInvalid) as err:
        parse_journey(source, **kw)
    return err.value.problems


def test_validation_names_node_paths_and_rules() -> None:
    got = problems("""
id: bad
entry: {type: api}
start: a
nodes:
  a:
    type: message
    channel: app
    variants:
      - {id: x, body: "{{ profil.name }}"}
      - {id: x, subject: "{{ profile.name | shout }}"}
      - {id: y, body: "ok", weight: 0}
    decision:
      strategy: rules
      rules: [{segment: vip, variant: nope}]
      default: gone
    next: b
  b:
    type: message
    channel: app
    body: hi
    variants: [{id: only, body: "one"}]
    decision: {strategy: bandit, goal: paid}
    next: c
  c:
    type: message
    channel: app
    body: hi
    decision: {strategy: fixed}
    next: d
  d:
    type: message
    channel: app
    body: hi
    variants: [{id: p, body: "p"}, {id: q, body: "q", weight: .inf}]
""")
    assert ("nodes.a.variants.2.weight", "Input should be greater than 0") in got
    assert any(p == "nodes.d.variants.1.weight" and "finite" in r for p, r in got)
    # Shape errors stop before the rules; fix them and the rules are all reported.
    fixed = problems("""
id: bad
entry: {type: api}
start: a
nodes:
  a:
    type: message
    channel: app
    variants:
      - {id: x, body: "{{ profil.name }}"}
      - {id: x, subject: "{{ profile.name | shout }}"}
    decision:
      strategy: rules
      rules: [{segment: vip, variant: nope}]
      default: gone
    next: b
  b:
    type: message
    channel: app
    body: hi
    variants: [{id: only, body: "one"}]
    decision: {strategy: bandit, goal: paid}
    next: c
  c:
    type: message
    channel: app
    body: hi
    decision: {strategy: fixed}
    next: d
  d:
    type: message
    channel: app
    body: hi
    variants: [{id: p, body: "p"}, {id: q, body: "q"}]
""", segments={"families"})
    paths = {p: r for p, r in fixed}
    assert paths["nodes.a.variants.1.id"] == "duplicate variant id 'x'"
    assert paths["nodes.a.variants.0.body"].startswith("template unknown variable")
    assert paths["nodes.a.variants.1.subject"].startswith("template unknown filter")
    assert paths["nodes.a.variants.1"].startswith("a variant needs body")
    assert paths["nodes.a.decision.rules.0.variant"] == "no variant named 'nope'"
    assert paths["nodes.a.decision.rules.0.segment"] == "no segment named 'vip'"
    assert paths["nodes.a.decision.default"] == "no variant named 'gone'"
    assert paths["nodes.b.variants"] == "strategy bandit needs at least two variants"
    assert paths["nodes.b.decision.goal"] == "no goal named 'paid'"
    assert paths["nodes.c.decision"] == "a decision needs variants"
    assert paths["nodes.d.decision"].startswith("required when a message has several")
    # Without a segment list the segment rule is not checked (they may come later).
    assert "nodes.a.decision.rules.0.segment" not in dict(problems(
        "id: j\nentry: {type: api}\nstart: a\nnodes:\n  a: {type: message, channel: app, "
        "variants: [{id: x, body: a}], decision: {strategy: rules, rules: "
        "[{segment: vip, variant: nope}]}}"))


def test_a_bandit_needs_a_goal_and_the_node_body_can_serve_every_variant() -> None:
    got = problems(BANDIT.replace("goals:\n  - {name: ordered, event: {event: pay}, "
                                  "window: 3d}", ""))
    assert got == [("nodes.offer.decision",
                    "a bandit learns from a journey goal; the journey has none")]
    ok = parse_journey("""
id: j
entry: {type: api}
start: m
nodes:
  m:
    type: message
    channel: official_account
    template_id: weekend_family_set
    variants: [{id: a, content: {k: 1}}, {id: b}]
    decision: {strategy: experiment}
""")
    node = ok.nodes["m"]
    assert isinstance(node, MessageNode) and [v.id for v in node.variants] == ["a", "b"]


# -- stats ----------------------------------------------------------------------------


def test_stats_per_variant_sent_and_converted(engine: Engine, sink: ProviderState) -> None:
    clock_of(engine).set(NOON_SHANGHAI)
    apply(engine, EXPERIMENT.replace("transactional", "marketing"))
    users = list(range(1, 201))
    with engine.store.transaction() as tx:  # two unsubscribed users never get theirs
        for u in (1, 2):
            set_consent(tx, "default", u, pol.ConsentState(unsubscribed_all=True), T0)
    for u in users:
        engine.enter_api("default", "split", u, {}, key="k")
    drain(make_outbox(engine, sink))
    got = variants_sent(engine.store, "split")
    buyers = [u for u in users if u % 3 == 0 or u in (1, 2)]
    engine.handle_events([ev(u, "pay", engine.clock.now_ms() + 1000) for u in buyers])
    with engine.store.transaction() as tx:
        s = journey_stats(tx, "default", "split")
    v = s["nodes"]["offer"]["variants"]
    for arm in ("a", "b"):
        mine = [u for u in users if got[u] == arm]
        skipped = [u for u in mine if u in (1, 2)]
        sent = len(mine) - len(skipped)
        won = len([u for u in mine if u in buyers and u not in (1, 2)])
        assert v[arm]["messages"] == ({"sent": sent, "skipped": len(skipped)} if skipped
                                      else {"sent": sent})
        assert (v[arm]["sent"], v[arm]["converted"]) == (sent, {"ordered": won})
        assert v[arm]["conversion"]["ordered"] == round(won / sent, 4)
        assert "bandit" not in v[arm]
    # The journey-wide goal count still includes the skipped users who bought anyway.
    assert s["converted"] == {"ordered": len(buyers)}
