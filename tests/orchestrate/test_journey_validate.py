"""Journey definitions: every problem reported with its path; nothing crashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.errors import InvalidInput
from touchline.orchestrate.model import Journey, parse_duration, predicate_holds
from touchline.orchestrate.validate import DefinitionInvalid, parse_journey

DEMO = Path(__file__).resolve().parents[2] / "src/touchline/demo/journeys"


def problems(source: str | dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionInvalid) as err:
        parse_journey(source)
    assert isinstance(err.value, InvalidInput)
    return err.value.problems


@pytest.mark.parametrize("path", sorted(DEMO.glob("*.yaml")), ids=lambda p: p.stem)
def test_demo_journeys_are_valid(path: Path) -> None:
    j = parse_journey(path.read_text())
    assert j.id == path.stem


def test_shape_errors_name_the_node_path() -> None:
    got = problems("""
id: j
entry: {type: event, event: a, corelation_key: x}
start: m
nodes:
  m: {type: message, chanel: sms, body: hi}
  d: {type: delay, duration: soon}
  w: {type: wait, event: {event: pay}, on_timeout: m}
""")
    assert ("entry.corelation_key", "Extra inputs are not permitted") in got
    assert ("nodes.m.channel", "Field required") in got
    assert ("nodes.m.chanel", "Extra inputs are not permitted") in got
    assert any(p == "nodes.d.duration" and "not a duration" in r for p, r in got)
    assert ("nodes.w.timeout", "Field required") in got


def test_graph_errors_all_reported() -> None:
    got = problems("""
id: j
entry: {type: event, event: a}
start: nowhere
nodes:
  a: {type: jump, to: b}
  b: {type: jump, to: a}
  c: {type: condition, branches: [{when: {group: x}, next: zz}], default: a}
  d: {type: delay, duration: 1h, until_time: {time: "10:00"}}
  w: {type: wait, event: {event: pay, match_correlation: true}, timeout: 1h, on_timeout: a}
""")
    paths = {p for p, _ in got}
    assert "start" in paths
    assert "nodes.c.branches.0.next" in paths
    assert "nodes.c.branches.0.when.group" in paths
    assert "nodes.d" in paths
    assert "nodes.w.event.match_correlation" in paths
    assert any("loop without a delay or wait" in r for _, r in got)


def test_template_problems_have_node_paths() -> None:
    got = problems("""
id: j
entry: {type: api}
start: m
nodes:
  m: {type: message, channel: sms, subject: "{{ profil.name }}", body: "{% if %}"}
  h: {type: webhook, url: "http://x", body: {text: "{{ event.a | nosuch }}"}}
""")
    paths = [p for p, _ in got]
    assert "nodes.m.subject" in paths and "nodes.m.body" in paths
    assert "nodes.h" in paths  # unreachable


def test_bad_text_is_one_clear_problem() -> None:
    assert problems("id: [unclosed")[0][0] == "(root)"
    assert problems("- a list")[0] == ("(root)", "a journey definition is a mapping")


def test_durations_and_predicates() -> None:
    assert parse_duration("30m") == 1_800_000
    assert parse_duration("-7d") == -604_800_000
    assert parse_duration(90) == 90_000
    with pytest.raises(ValueError):
        parse_duration("3 fortnights")
    assert predicate_holds({"gte": 100, "lt": 200}, 150)
    assert not predicate_holds({"gte": 100}, "abc")
    assert predicate_holds({"in": ["a", "b"]}, "a")
    assert predicate_holds({"exists": False}, None)
    assert predicate_holds("x", "x") and not predicate_holds("x", None)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                     st.floats(allow_nan=False))
_docs = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["id", "type", "event", "next", "start", "nodes",
                                     "entry", "timeout", "to", "branches", "when", "x"]),
                    inner, max_size=5)), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_docs)
def test_any_document_is_a_journey_or_a_listed_problem(doc: Any) -> None:
    try:
        j = parse_journey(doc if isinstance(doc, dict) else {"doc": doc})
    except DefinitionInvalid as exc:
        assert exc.problems and all(isinstance(p, str) and r for p, r in exc.problems)
    else:
        assert isinstance(j, Journey)


_node_ids = st.sampled_from(["a", "b", "c", "d"])
_nodes = st.dictionaries(_node_ids, st.one_of(
    st.builds(lambda n: {"type": "jump", "to": n}, _node_ids),
    st.builds(lambda n, t: {"type": "delay", "duration": t, "next": n}, _node_ids,
              st.sampled_from(["1m", "0s", "-1h", "2d"])),
    st.builds(lambda n, m: {"type": "wait", "event": {"event": "e"}, "timeout": "1h",
                            "next": n, "on_timeout": m}, _node_ids, _node_ids),
    st.just({"type": "exit"}),
    st.builds(lambda n: {"type": "message", "channel": "sms", "body": "hi", "next": n},
              _node_ids),
), min_size=1)


@settings(max_examples=300, deadline=None)
@given(_nodes, _node_ids)
def test_random_graphs_validate_consistently(nodes: dict[str, Any], start: str) -> None:
    doc = {"id": "g", "entry": {"type": "api"}, "start": start, "nodes": nodes}
    try:
        j = parse_journey(doc)
    except DefinitionInvalid as exc:
        assert exc.problems
        return
    # Accepted: every edge lands on a node, and every node is reachable.
    for nid in j.nodes:
        assert all(t in j.nodes for _, t in j.successors(nid))
