"""Liquid templates: apply-time checks and strict, all-or-nothing rendering."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.orchestrate.templates import (
    SkipSend,
    check_template,
    render_message,
    render_template,
    template_variables,
)

CTX = {
    "profile": {"name": "Ann", "tier": "gold", "city": None},
    "event": {"order_id": "o-1", "amount": 128.5, "items": [{"sku": "B1"}, {"sku": "F2"}]},
    "journey": {"coupon": "C10"},
}


def test_renders_profile_event_and_journey() -> None:
    src = ("Hi {{ profile.name }}, order {{ event.order_id }} ({{ event.amount | times: 2 }}):"
           " {% for i in event.items %}{{ i.sku }} {% endfor %}code {{ journey.coupon }}")
    assert render_template(src, CTX) == "Hi Ann, order o-1 (257.0): B1 F2 code C10"


def test_missing_variable_uses_its_default() -> None:
    src = "Hi {{ profile.nickname | default: profile.name }} from {{ profile.city | default: 'here' }}"
    assert render_template(src, CTX) == "Hi Ann from here"


def test_missing_variable_without_default_skips_the_send() -> None:
    with pytest.raises(SkipSend) as err:
        render_template("Hi {{ profile.nickname }}", CTX, part="subject")
    assert err.value.part == "subject"
    assert err.value.variable == "profile.nickname"


def test_null_counts_as_missing() -> None:
    with pytest.raises(SkipSend):
        render_template("{{ profile.city }}", CTX)


def test_missing_variable_in_a_condition_is_false() -> None:
    src = "{% if profile.vip %}VIP{% else %}member{% endif %}"
    assert render_template(src, CTX) == "member"


def test_render_message_is_all_or_nothing() -> None:
    parts = {"subject": "Hi {{ profile.name }}", "body": "{{ event.nothing }}"}
    with pytest.raises(SkipSend) as err:
        render_message(parts, CTX)
    assert err.value.part == "body"
    assert render_message({"subject": "Hi {{ profile.name }}"}, CTX) == {"subject": "Hi Ann"}


def test_check_reports_syntax_with_position() -> None:
    [problem] = check_template("Hello\n  {% nosuchtag %}", field="nodes.a.body")
    assert (problem.field, problem.rule, problem.line, problem.column) == (
        "nodes.a.body", "syntax", 2, 6)
    assert "nosuchtag" in problem.detail
    [unclosed] = check_template("{% if profile.vip %}x")
    assert unclosed.rule == "syntax" and "endif" in unclosed.detail
    err = unclosed.as_error()
    assert err.field == "template" and err.rule.startswith("syntax")


def test_check_reports_unknown_filters_and_variables() -> None:
    problems = check_template("{{ profile.name | shout }}\n{{ order.id }} {{ journey.x }}")
    assert [(p.rule, p.line, p.column) for p in problems] == [
        ("unknown filter", 1, 19), ("unknown variable", 2, 4)]
    assert "'order'" in problems[1].detail


def test_check_warns_when_default_comes_too_late() -> None:
    src = "Hi\n{% if profile.vip %}{{ profile.city | upcase | default: 'x' }}{% endif %}"
    assert check_template(src) == []  # legal, so not an error that blocks applying
    [problem] = check_template(src, warnings=True)
    assert (problem.rule, problem.line, problem.column) == ("default not first", 2, 24)
    assert problem.severity == "warning"
    assert "profile.city" in problem.detail
    # It is right: that template skips when the city is missing.
    with pytest.raises(SkipSend):
        render_template(src, {"profile": {"vip": True}})
    assert check_template("{{ profile.city | default: 'x' | upcase }}", warnings=True) == []
    assert render_template("{{ profile.city | default: 'x' | upcase }}", {"profile": {}}) == "X"


def test_check_accepts_locals_and_known_filters() -> None:
    src = "{% assign n = profile.name | upcase %}{% for i in event.items %}{{ i.sku }}{% endfor %}{{ n }}"
    assert check_template(src) == []


def test_variables_used() -> None:
    src = "{{ profile.name | default: 'x' }}{% for i in event.items %}{{ i.sku }}{% endfor %}"
    assert template_variables(src) == ["event.items", "profile.name"]


def test_render_errors_inside_filters_skip_instead_of_crashing() -> None:
    with pytest.raises(SkipSend):
        render_template("{{ event.amount | divided_by: 0 }}", CTX)


_text = st.text(alphabet=string.ascii_letters + string.digits + " .,!-", max_size=40)


@settings(max_examples=60, deadline=None)
@given(name=_text, fallback=_text, present=st.booleans())
def test_output_is_the_value_or_the_fallback_never_partial(
    name: str, fallback: str, present: bool
) -> None:
    profile = {"name": name} if present else {}
    out = render_template("[{{ profile.name | default: f }}]", {"profile": profile, "f": fallback})
    # Liquid's default also replaces empty strings.
    assert out == f"[{name if present and name else fallback}]"


_pieces = st.sampled_from([
    "{{", "}}", "{%", "%}", "|", ":", " ", ".", "'", "\"", "if", "endif", "for", "in",
    "endfor", "assign", "=", "profile", "event", "journey", "name", "items", "default",
    "upcase", "times", "x", "1", "\n", "abc",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(_pieces, max_size=25).map("".join))
def test_checking_any_text_never_raises(source: str) -> None:
    problems = [p for p in check_template(source, warnings=True) if p.severity == "error"]
    assert problems == check_template(source)
    if not problems:
        # What check accepts, rendering either completes or skips; it never crashes.
        try:
            render_template(source, CTX)
        except SkipSend:
            pass
