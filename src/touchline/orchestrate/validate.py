"""Parse and check a journey definition; report every problem with its path.

:func:`parse_journey` accepts YAML or JSON text or an already-decoded mapping and
returns a :class:`~touchline.orchestrate.model.Journey`, or raises
:class:`DefinitionInvalid` listing *all* problems (``nodes.send_coupon.channel:
field required``), so an operator fixes a definition in one pass. Nothing is
applied unless this succeeds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import ValidationError

from ..errors import InvalidInput
from .content import content_problems
from .model import (
    OPERATORS,
    ConditionNode,
    DelayNode,
    EventMatch,
    ExperimentNode,
    Journey,
    MessageNode,
    RandomNode,
    ScheduleEntry,
    UntilTime,
    WaitNode,
    WebhookNode,
)

__all__ = [
    "DefinitionInvalid",
    "Problem",
    "TemplateChecker",
    "check_journey",
    "default_template_checker",
    "parse_journey",
]

Problem = tuple[str, str]
"""(path, rule): where in the definition, and which rule it breaks."""

TemplateChecker = Callable[[str], list[str]]
"""Returns the problems of one template source (empty when it is fine)."""

_NODE_TYPES = frozenset(
    {"delay", "wait", "condition", "random", "experiment", "message", "update_profile",
     "webhook", "jump", "exit"}
)
_ENTRY_TYPES = frozenset({"event", "segment", "schedule", "api"})
_CONDITION_KEYS = frozenset({"in_segment", "not_in_segment"})
_CONDITION_ROOTS = ("profile.", "event.", "journey.")


class DefinitionInvalid(InvalidInput):
    """A journey definition broke one or more rules; ``problems`` lists them all."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        field, rule = problems[0]
        super().__init__(field, rule)
        self.args = ("; ".join(f"{p}: {r}" for p, r in problems),)

    def as_dict(self) -> dict[str, object]:
        return {"field": self.field, "rule": self.rule,
                "problems": [{"field": p, "rule": r} for p, r in self.problems]}


def _path(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    # Pydantic puts the discriminator tag into the location of a tagged union; the
    # operator wrote ``nodes.x.channel``, not ``nodes.x.message.channel``.
    if len(parts) >= 3 and parts[0] == "nodes" and parts[2] in _NODE_TYPES:
        del parts[2]
    if len(parts) >= 2 and parts[0] == "entry" and parts[1] in _ENTRY_TYPES:
        del parts[1]
    return ".".join(str(p) for p in parts) or "(root)"


def _decode(source: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    try:
        data = yaml.safe_load(source)  # JSON is a subset of YAML
    except yaml.YAMLError as exc:
        raise DefinitionInvalid([("(root)", f"not valid YAML or JSON: {exc}")]) from exc
    if not isinstance(data, Mapping):
        raise DefinitionInvalid([("(root)", "a journey definition is a mapping")])
    return data


def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _where_problems(path: str, where: Mapping[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    for key, value in where.items():
        if isinstance(value, dict) and value and not set(value) <= OPERATORS:
            bad = sorted(set(value) - OPERATORS)
            if any(k in OPERATORS for k in value):
                out.append((f"{path}.{key}", f"unknown operator(s) {bad}; "
                            f"use {sorted(OPERATORS)}"))
        if isinstance(value, dict):
            for op in ("in", "not_in"):
                if op in value and not isinstance(value[op], list):
                    out.append((f"{path}.{key}.{op}", "takes a list"))
    return out


def _event_match(path: str, m: EventMatch, has_key: bool) -> list[Problem]:
    out = _where_problems(f"{path}.where", m.where)
    if m.match_correlation and not has_key:
        out.append((f"{path}.match_correlation",
                    "needs an event entry with a correlation_key"))
    return out


def _node_problems(j: Journey, nid: str, has_key: bool,
                   check_template: TemplateChecker | None,
                   segments: Collection[str] | None) -> list[Problem]:
    node = j.nodes[nid]
    p = f"nodes.{nid}"
    out: list[Problem] = []
    if isinstance(node, DelayNode):
        given = [f for f in ("duration", "until_time", "until_property")
                 if getattr(node, f) is not None]
        if len(given) != 1:
            out.append((p, "a delay takes exactly one of duration, until_time, until_property"))
        if isinstance(node.until_time, UntilTime) and node.until_time.time_zone != "user" \
                and not _zone_ok(node.until_time.time_zone):
            out.append((f"{p}.until_time.time_zone", "unknown time zone"))
        if isinstance(node.until_time, UntilTime) and not node.until_time.weekdays:
            out.append((f"{p}.until_time.weekdays", "name at least one weekday"))
    elif isinstance(node, WaitNode):
        if (node.event is None) == (node.segment is None):
            out.append((p, "a wait takes exactly one of event, segment"))
        if node.event is not None:
            out += _event_match(f"{p}.event", node.event, has_key)
    elif isinstance(node, ConditionNode):
        for i, b in enumerate(node.branches):
            for key in b.when:
                if key not in _CONDITION_KEYS and not key.startswith(_CONDITION_ROOTS):
                    out.append((f"{p}.branches.{i}.when.{key}",
                                "a condition key starts with profile., event. or journey., "
                                "or is in_segment / not_in_segment"))
            out += _where_problems(f"{p}.branches.{i}.when", b.when)
    elif isinstance(node, RandomNode | ExperimentNode):
        arms = node.branches if isinstance(node, RandomNode) else [*node.variants, node.control]
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            out.append((p, "branch and variant names must be unique"))
    elif isinstance(node, MessageNode):
        # With variants, each variant (over the node's parts) must be sendable instead.
        if not node.variants and node.body is None and node.template_id is None \
                and not node.content:
            out.append((p, "a message needs body, template_id or content"))
        if check_template is not None:
            for field in ("subject", "body", "to"):
                source = getattr(node, field)
                if source:
                    out += [(f"{p}.{field}", prob) for prob in check_template(source)]
        out += content_problems(node, p, j, check_template, segments)
    elif isinstance(node, WebhookNode) and check_template is not None:
        for key, value in node.body.items():
            if isinstance(value, str):
                out += [(f"{p}.body.{key}", prob) for prob in check_template(value)]
    return out


def _loop_problems(j: Journey) -> list[Problem]:
    """A cycle that passes no delay or wait would spin forever within one step."""
    pausing = {n for n, node in j.nodes.items() if isinstance(node, DelayNode | WaitNode)}
    out: list[Problem] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for _, target in j.successors(n):
            if target not in j.nodes or target in pausing:
                continue
            if state.get(target) == 1:
                cycle = [*trail[trail.index(target):], target] if target in trail else [target]
                out.append((f"nodes.{target}",
                            f"loop without a delay or wait: {' -> '.join(cycle)}"))
            elif target not in state:
                visit(target, [*trail, target])
        state[n] = 2

    for n in j.nodes:
        if n not in state:
            visit(n, [n])
    return out


def check_journey(j: Journey, check_template: TemplateChecker | None = None,
                  segments: Collection[str] | None = None) -> list[Problem]:
    """The rules a shape cannot express; empty when the journey is sound.

    ``segments``, when given, are the segments that exist; content rules naming
    another are reported."""
    out: list[Problem] = []
    if j.start not in j.nodes:
        out.append(("start", f"no node named {j.start!r}"))
    has_key = getattr(j.entry, "correlation_key", None) is not None
    e = j.entry
    if isinstance(e, ScheduleEntry) and (e.cron is None) == (e.at is None):
        out.append(("entry", "a schedule takes exactly one of cron, at"))
    if hasattr(e, "where"):
        out += _where_problems("entry.where", e.where)
    if j.re_entry.mode == "cooldown" and j.re_entry.cooldown is None:
        out.append(("re_entry.cooldown", "required when mode is cooldown"))
    for nid in j.nodes:
        for field, target in j.successors(nid):
            if target not in j.nodes:
                out.append((f"nodes.{nid}.{field}", f"no node named {target!r}"))
        out += _node_problems(j, nid, has_key, check_template, segments)
    if j.start in j.nodes:
        seen = {j.start}
        todo = [j.start]
        while todo:
            for _, t in j.successors(todo.pop()):
                if t in j.nodes and t not in seen:
                    seen.add(t)
                    todo.append(t)
        out += [(f"nodes.{n}", "unreachable from start") for n in j.nodes if n not in seen]
    out += _loop_problems(j)
    for i, c in enumerate(j.exit_when):
        if (c.event is None) == (c.leave_segment is None):
            out.append((f"exit_when.{i}", "an exit criterion takes exactly one of event, "
                        "leave_segment"))
        if c.event is not None:
            out += _event_match(f"exit_when.{i}.event", c.event, has_key)
    names = [g.name for g in j.goals]
    for i, g in enumerate(j.goals):
        if names.count(g.name) > 1:
            out.append((f"goals.{i}.name", f"duplicate goal {g.name!r}"))
        out += _event_match(f"goals.{i}.event", g.event, has_key)
    return out


def default_template_checker() -> TemplateChecker | None:
    """The content module's Liquid checker, when it is installed."""
    import importlib

    try:
        templates = importlib.import_module("touchline.orchestrate.templates")
    except ImportError:
        return None
    fn = getattr(templates, "check_template", None)
    if fn is None:
        return None

    def check(source: str) -> list[str]:
        out = []
        for p in fn(source):
            where = f" at line {p.line} column {p.column}" if p.line is not None else ""
            out.append(f"template {p.rule}{where}: {p.detail}")
        return out

    return check


def parse_journey(
    source: str | bytes | Mapping[str, Any],
    *,
    check_template: TemplateChecker | str | None = "default",
    segments: Collection[str] | None = None,
) -> Journey:
    """Decode, shape-check and rule-check a definition; raise with every problem.

    Message templates are checked with the content module's Liquid checker unless
    ``check_template`` is given (None turns template checks off). ``segments`` (the
    names that exist) also checks the segments content rules name."""
    if check_template == "default":
        check_template = default_template_checker()
    assert not isinstance(check_template, str)
    data = _decode(source)
    try:
        journey = Journey.model_validate(dict(data))
    except ValidationError as exc:
        problems = [(_path(err["loc"]), err["msg"]) for err in exc.errors()]
        raise DefinitionInvalid(problems) from None
    problems = check_journey(journey, check_template, segments)
    if problems:
        raise DefinitionInvalid(problems)
    return journey
