"""Content decision: which variant of a message a user gets.

A message node lists variants (each a set of Liquid template parts: subject, body,
template_id, content data) and a decision strategy:

- ``fixed``: the ``default`` variant (else the first);
- ``rules``: the first rule whose segment the user is in (segment -> variant), else
  ``default``;
- ``experiment``: a stable hash of (user, journey, experiment name) into the variants'
  weights, so a returning user gets the same variant (the same hash an experiment node
  uses, so a content experiment and a branch experiment of one name split alike);
- ``bandit``: Thompson sampling on the journey goal (:mod:`touchline.orchestrate.bandit`).

Journey message nodes carry the decision as ``MessageNode.variants`` and ``MessageNode.decision``: :func:`decide_for_entry` picks
(once per entry), :func:`decision_of` turns a node into a :class:`ContentDecision`,
:func:`content_problems` lists what is wrong with one at apply time, and
:func:`variant_parts` gives the message parts a chosen variant sends.
:meth:`ContentDecision.from_dict` remains for decisions built outside a journey.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import xxhash

from ..errors import InvalidInput
from .bandit import ThompsonBandit
from .model import Journey, MessageNode
from .templates import TemplateProblem, check_template

__all__ = [
    "STRATEGIES",
    "Choice",
    "ContentDecision",
    "SegmentRule",
    "Variant",
    "bandit_goal",
    "bandit_key",
    "choose_by_experiment",
    "choose_by_rules",
    "choose_variant",
    "content_problems",
    "decide_for_entry",
    "decision_of",
    "stable_unit",
    "variant_parts",
]

Strategy = Literal["fixed", "rules", "experiment", "bandit"]
STRATEGIES: tuple[str, ...] = ("fixed", "rules", "experiment", "bandit")


@dataclass(frozen=True)
class Variant:
    """One version of the content: template parts by name, and an experiment weight."""

    id: str
    parts: Mapping[str, str] = field(default_factory=dict)
    weight: float = 1.0


@dataclass(frozen=True)
class SegmentRule:
    segment: str
    variant: str


@dataclass(frozen=True)
class Choice:
    variant: Variant
    strategy: str
    reason: str


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts``: the same user, journey and salt
    always land in the same place, on every worker and after every restart. (The same
    function as :func:`touchline.orchestrate.engine.stable_fraction`.)"""
    digest = xxhash.xxh64_intdigest("\x1f".join(str(p) for p in parts).encode())
    return digest / 2**64


@dataclass(frozen=True)
class ContentDecision:
    """The variants of one message node and how to choose among them."""

    variants: tuple[Variant, ...]
    strategy: Strategy = "fixed"
    rules: tuple[SegmentRule, ...] = ()
    default: str = ""
    salt: str = ""

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.id == variant_id:
                return v
        raise InvalidInput("content.variant", f"unknown variant {variant_id!r}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, field: str = "content") -> ContentDecision:
        """From a journey definition; every error names ``field.<key>``."""
        strategy = raw.get("strategy", "fixed")
        if strategy not in STRATEGIES:
            raise InvalidInput(f"{field}.strategy", f"one of {', '.join(STRATEGIES)}")
        raw_variants = raw.get("variants")
        if not isinstance(raw_variants, list) or not raw_variants:
            raise InvalidInput(f"{field}.variants", "a non-empty list")
        variants: list[Variant] = []
        for i, item in enumerate(raw_variants):
            where = f"{field}.variants[{i}]"
            if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
                raise InvalidInput(f"{where}.id", "required string")
            weight = item.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
                raise InvalidInput(f"{where}.weight", "a positive number")
            parts = {k: v for k, v in item.items() if k not in ("id", "weight")}
            for key, value in parts.items():
                if not isinstance(value, str):
                    raise InvalidInput(f"{where}.{key}", "a template string")
            variants.append(Variant(item["id"], parts, float(weight)))
        ids = [v.id for v in variants]
        if len(set(ids)) != len(ids):
            raise InvalidInput(f"{field}.variants", "variant ids must be unique")
        rules: list[SegmentRule] = []
        for i, rule in enumerate(raw.get("rules") or []):
            if not isinstance(rule, Mapping) or not rule.get("segment"):
                raise InvalidInput(f"{field}.rules[{i}].segment", "required")
            if rule.get("variant") not in ids:
                raise InvalidInput(f"{field}.rules[{i}].variant", "must name a variant")
            rules.append(SegmentRule(str(rule["segment"]), str(rule["variant"])))
        default = str(raw.get("default") or ids[0])
        if default not in ids:
            raise InvalidInput(f"{field}.default", "must name a variant")
        if strategy == "rules" and not rules:
            raise InvalidInput(f"{field}.rules", "required for strategy rules")
        return cls(tuple(variants), strategy, tuple(rules), default, str(raw.get("salt") or ""))

    def check(self, *, field: str = "content") -> list[TemplateProblem]:
        """Template problems in every part of every variant."""
        problems: list[TemplateProblem] = []
        for i, v in enumerate(self.variants):
            for name, source in v.parts.items():
                problems += check_template(source, field=f"{field}.variants[{i}].{name}")
        return problems


def choose_by_rules(
    rules: Collection[SegmentRule], segments: Collection[str], default: str
) -> tuple[str, str]:
    """(variant id, why): the first rule whose segment the user is in."""
    for rule in rules:
        if rule.segment in segments:
            return rule.variant, f"in segment {rule.segment!r}"
    return default, "no rule matched"


def choose_by_experiment(
    variants: tuple[Variant, ...], user_id: str | int, journey_id: str, salt: str = ""
) -> Variant:
    """The variant a stable hash of the user puts them in, by weight."""
    # Cumulative shares in the experiment node's order and arithmetic, so both kinds
    # of split agree to the last bit.
    fraction = stable_unit(user_id, journey_id, salt)
    total = sum(v.weight for v in variants)
    acc = 0.0
    for v in variants:
        acc += v.weight / total
        if fraction < acc:
            return v
    return variants[-1]


def choose_variant(
    decision: ContentDecision,
    *,
    user_id: str | int,
    journey_id: str,
    segments: Collection[str] = (),
    bandit: ThompsonBandit | None = None,
    bandit_key: str = "",
) -> Choice:
    """The variant this user gets. ``bandit`` is required for the bandit strategy;
    the caller records the send (and later the conversion) with ``bandit_key``."""
    if decision.strategy == "rules":
        vid, why = choose_by_rules(decision.rules, segments, decision.default)
        return Choice(decision.variant(vid), "rules", why)
    if decision.strategy == "experiment":
        v = choose_by_experiment(decision.variants, user_id, journey_id, decision.salt)
        return Choice(v, "experiment", "stable hash of user and journey")
    if decision.strategy == "bandit":
        if bandit is None:
            raise InvalidInput("content.strategy", "bandit strategy needs a bandit")
        arm = bandit.choose(bandit_key or journey_id, [v.id for v in decision.variants])
        return Choice(decision.variant(arm), "bandit", "Thompson sampling")
    return Choice(decision.variant(decision.default or decision.variants[0].id), "fixed",
                  "fixed variant")


# -- journey message nodes ------------------------------------------------------------

_PARTS = ("subject", "body", "template_id")


def decision_of(node: MessageNode, node_id: str) -> ContentDecision:
    """The decision of a message node that has variants (validated at apply time)."""
    spec = node.decision
    variants = tuple(
        Variant(v.id, {k: getattr(v, k) for k in _PARTS if getattr(v, k) is not None},
                v.weight) for v in node.variants)
    if spec is None:  # refused at apply time; a fixed first variant is the safe reading
        return ContentDecision(variants, "fixed", (), variants[0].id, node_id)
    rules = tuple(SegmentRule(r.segment, r.variant) for r in spec.rules)
    return ContentDecision(variants, spec.strategy, rules, spec.default or variants[0].id,
                           spec.experiment or node_id)


def variant_parts(node: MessageNode, variant_id: str) -> dict[str, Any]:
    """subject, body, template_id and content as the chosen variant sends them: what
    the variant sets replaces the node's own, and its content keys override the node's."""
    v = next(x for x in node.variants if x.id == variant_id)
    out: dict[str, Any] = {}
    for k in _PARTS:
        value = getattr(v, k) if getattr(v, k) is not None else getattr(node, k)
        if value is not None:
            out[k] = value
    out["content"] = {**node.content, **v.content}
    return out


def bandit_goal(node: MessageNode, journey: Journey) -> str | None:
    """The goal whose conversions reward this node's bandit (None: the journey has none)."""
    if node.decision is not None and node.decision.goal:
        return node.decision.goal
    return journey.goals[0].name if journey.goals else None


def bandit_key(project: str, journey_id: str, node_id: str) -> str:
    """Where a bandit node's arm counts live. Kept across versions of the journey, so
    learning carries over a re-publish; give a variant a new id when its content changes
    enough that its past results no longer speak for it."""
    return f"{project}/{journey_id}/{node_id}"


def decide_for_entry(
    node: MessageNode,
    node_id: str,
    journey: Journey,
    *,
    user_id: int,
    chosen: dict[str, Any],
    bandit: ThompsonBandit,
    member_of: Callable[[Sequence[str]], Collection[str]],
) -> tuple[dict[str, Any], str]:
    """The variant one journey entry gets at ``node_id``, and why.

    ``chosen`` is the entry's record of earlier choices (kept in its journey state,
    which commits with the outbox row): a node decided before keeps its variant, so a
    loop back through the node, or a replayed step, sends what was chosen the first
    time whatever the bandit thinks now. ``member_of`` answers which of the rules'
    segments the user is in. The record gets ``id`` and ``strategy``, and for a bandit
    its counts' ``bandit`` key and the ``goal`` that rewards it.
    """
    prev = chosen.get(node_id)
    if prev is not None and any(v.id == prev.get("id") for v in node.variants):
        return prev, "chosen on an earlier visit"
    decision = decision_of(node, node_id)
    segments: Collection[str] = ()
    if decision.strategy == "rules":
        segments = member_of(sorted({r.segment for r in decision.rules}))
    key = bandit_key(journey.project, journey.id, node_id) \
        if decision.strategy == "bandit" else ""
    choice = choose_variant(decision, user_id=user_id, journey_id=journey.id,
                            segments=segments, bandit=bandit, bandit_key=key)
    rec: dict[str, Any] = {"id": choice.variant.id, "strategy": choice.strategy}
    if key:
        rec["bandit"] = key
        rec["goal"] = bandit_goal(node, journey)
    chosen[node_id] = rec
    return rec, choice.reason


def _variant_problems(node: MessageNode, path: str,
                      check: Callable[[str], list[str]] | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, v in enumerate(node.variants):
        where = f"{path}.variants.{i}"
        if v.id in seen:
            out.append((f"{where}.id", f"duplicate variant id {v.id!r}"))
        seen.add(v.id)
        if (v.body or node.body) is None and (v.template_id or node.template_id) is None \
                and not (v.content or node.content):
            out.append((where, "a variant needs body, template_id or content (its own or "
                        "the node's)"))
        if check is not None:
            for part in ("subject", "body"):
                source = getattr(v, part)
                if source:
                    out += [(f"{where}.{part}", prob) for prob in check(source)]
    return out


def content_problems(
    node: MessageNode,
    path: str,
    journey: Journey,
    check: Callable[[str], list[str]] | None = None,
    segments: Collection[str] | None = None,
) -> list[tuple[str, str]]:
    """(path, rule) for everything wrong with a message node's variants and decision.

    ``segments``, when given, are the segments that exist: a rule naming another one is
    reported (a typo there would silently send everyone the default)."""
    spec = node.decision
    if not node.variants:
        return [(f"{path}.decision", "a decision needs variants")] if spec else []
    out = _variant_problems(node, path, check)
    ids = {v.id for v in node.variants}
    if spec is None:
        if len(node.variants) > 1:
            out.append((f"{path}.decision", "required when a message has several variants "
                        "(strategy fixed, rules, experiment or bandit)"))
        return out
    p = f"{path}.decision"
    if spec.default is not None and spec.default not in ids:
        out.append((f"{p}.default", f"no variant named {spec.default!r}"))
    if spec.strategy == "rules" and not spec.rules:
        out.append((f"{p}.rules", "strategy rules needs at least one rule"))
    if spec.strategy != "rules" and spec.rules:
        out.append((f"{p}.rules", f"only strategy rules uses rules (this is {spec.strategy})"))
    for i, rule in enumerate(spec.rules):
        if rule.variant not in ids:
            out.append((f"{p}.rules.{i}.variant", f"no variant named {rule.variant!r}"))
        if segments is not None and rule.segment not in segments:
            out.append((f"{p}.rules.{i}.segment", f"no segment named {rule.segment!r}"))
    if spec.strategy in ("experiment", "bandit") and len(node.variants) < 2:
        out.append((f"{path}.variants", f"strategy {spec.strategy} needs at least two "
                    "variants"))
    if spec.experiment is not None and spec.strategy != "experiment":
        out.append((f"{p}.experiment", "only strategy experiment uses an experiment name"))
    goals = [g.name for g in journey.goals]
    if spec.strategy == "bandit":
        if spec.goal is not None and spec.goal not in goals:
            out.append((f"{p}.goal", f"no goal named {spec.goal!r}"))
        elif not goals:
            out.append((p, "a bandit learns from a journey goal; the journey has none"))
    elif spec.goal is not None:
        out.append((f"{p}.goal", "only strategy bandit uses a goal"))
    return out

