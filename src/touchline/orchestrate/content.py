"""Content decision: which variant of a message a user gets.

A message node lists variants (each a set of Liquid template parts: subject, body,
template_id, data...) and a strategy:

- ``fixed``: the first variant;
- ``rules``: the first rule whose segment the user is in (segment -> variant), else
  ``default``;
- ``experiment``: a stable hash of (journey, salt, user) into the variants' weights, so
  a returning user gets the same variant;
- ``bandit``: Thompson sampling on the journey goal (:mod:`touchline.orchestrate.bandit`).

:meth:`ContentDecision.from_dict` validates a definition with errors naming the field;
:meth:`ContentDecision.check` checks every template at apply time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import xxhash

from ..errors import InvalidInput
from .bandit import ThompsonBandit
from .templates import TemplateProblem, check_template

__all__ = [
    "STRATEGIES",
    "Choice",
    "ContentDecision",
    "SegmentRule",
    "Variant",
    "choose_by_experiment",
    "choose_by_rules",
    "choose_variant",
    "stable_unit",
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


def stable_unit(*parts: str) -> float:
    """A number in [0, 1) that depends only on ``parts``: the same user, journey and salt
    always land in the same place, on every worker and after every restart."""
    digest = xxhash.xxh64_intdigest("\x1f".join(parts).encode())
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
    variants: tuple[Variant, ...], user_id: str, journey_id: str, salt: str = ""
) -> Variant:
    """The variant a stable hash of the user puts them in, by weight."""
    point = stable_unit(journey_id, salt, user_id) * sum(v.weight for v in variants)
    for v in variants:
        if point < v.weight:
            return v
        point -= v.weight
    return variants[-1]


def choose_variant(
    decision: ContentDecision,
    *,
    user_id: str,
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
    return Choice(decision.variants[0], "fixed", "only variant")
